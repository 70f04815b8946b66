"""Which setting keeps Ray on loopback, measured on Ray itself (Ray 2.55, Linux).

Flower's simulation backend calls ``ray.init(include_dashboard=False, ...)``
with only ``num_cpus``/``num_gpus``/``logging_level``/``log_to_driver`` from the
federation config, so the environment is the only lever a launcher has. With
:data:`tooling.flower_local.LOOPBACK_ENV` every Ray listener (GCS, raylet, core
workers) binds 127.0.0.1; without it they bind ``::`` (every interface). The
Flower runs themselves are checked in ``tests/test_e2e_simulation.py`` and
``tests/test_flwr_run.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from tooling.flower_local import LOOPBACK_ENV
from tooling.procfs import (
    TAG_ENV,
    ListeningSocket,
    command_line,
    listening_sockets,
    tagged_pids,
)
from tooling.reaper import kill_pids

pytestmark = pytest.mark.e2e

RAY_DRIVER = """
import sys, ray
ray.init(include_dashboard=False, num_cpus=1)
@ray.remote
def one():
    return 1
assert ray.get(one.remote()) == 1
print("ready", flush=True)
sys.stdin.readline()
ray.shutdown()
"""


def ray_listeners(extra_env: dict[str, str]) -> dict[str, set[ListeningSocket]]:
    """Listening sockets of a small Ray session, by program name."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", RAY_DRIVER],
        env={**env, **extra_env, TAG_ENV: tag},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1)
        found: dict[str, set[ListeningSocket]] = {}
        for sock in listening_sockets(tagged_pids(tag)):
            program = command_line(sock.pid).split()[0].rsplit("/", 1)[-1]
            found.setdefault(program, set()).add(sock)
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        kill_pids(tagged_pids(tag), grace=5)
    assert tagged_pids(tag) == []
    return found


def test_loopback_env_keeps_every_ray_listener_on_loopback() -> None:
    found = ray_listeners(LOOPBACK_ENV)
    assert {"gcs_server", "raylet"} <= found.keys(), found
    assert all(s.loopback for socks in found.values() for s in socks), found


def test_without_it_ray_listens_on_every_interface() -> None:
    found = ray_listeners({})
    assert {"gcs_server", "raylet"} <= found.keys(), found
    assert not any(s.loopback for s in found["gcs_server"]), found
    assert not any(s.loopback for s in found["raylet"]), found
