"""No orphans: a SIGKILLed launcher's processes are stopped by its reaper.

The launcher here is a tiny real process that starts an OrphanGuard and then
three kinds of tagged processes: a plain child, a child detached into its own
session that ignores SIGTERM, and a grandchild whose parent exited (reparented
away from the launcher). The launcher alone is then SIGKILLed. The Flower
version of this (SuperLink, SuperExec, simulation, Ray) is in
``tests/test_launcher_faults.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tooling.procfs import (
    TAG_ENV,
    ListeningSocket,
    descendants,
    listening_sockets,
    parent_pid,
    pid_alive,
    tagged_pids,
)
from tooling.reaper import OrphanGuard, kill_pids

REPO = Path(__file__).resolve().parent.parent

LAUNCHER = """
import os, signal, subprocess, sys, time
from tooling.procfs import TAG_ENV
from tooling.reaper import OrphanGuard
tag, guarded = sys.argv[1], sys.argv[2] == "guarded"
if guarded:
    guard = OrphanGuard(tag, grace=1.0)
    guard.start()
env = {**os.environ, TAG_ENV: tag}
sleep = [sys.executable, "-c", "import time; time.sleep(300)"]
stubborn = [sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', flush=True); time.sleep(300)"]
spawn_orphan = [sys.executable, "-c",
    "import subprocess, sys; subprocess.Popen("
    "[sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)"]
child = subprocess.Popen(sleep, env=env)
daemon = subprocess.Popen(stubborn, env=env, start_new_session=True,
                          stdout=subprocess.PIPE, text=True)
daemon.stdout.readline()
subprocess.run(spawn_orphan, env=env, check=True)
reaper = guard.process.pid if guarded else 0
print("ready", reaper, flush=True)
time.sleep(300)
"""


def start_launcher(tag: str, guarded: bool) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, tag, "guarded" if guarded else "bare"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    assert proc.stdout is not None
    word, reaper = proc.stdout.readline().split()
    assert word == "ready"
    return proc, int(reaper)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]


def test_sigkilled_launcher_leaves_no_tagged_process() -> None:
    tag = uuid.uuid4().hex
    launcher, reaper = start_launcher(tag, guarded=True)
    try:
        tagged = tagged_pids(tag)
        assert len(tagged) == 3
        assert launcher.pid not in tagged and reaper not in tagged
        orphan = [p for p in tagged if parent_pid(p) != launcher.pid]
        assert len(orphan) == 1  # reparented away: not findable as a descendant
        assert orphan[0] not in descendants(launcher.pid)
        assert pid_alive(reaper)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        # 1 s grace for the SIGTERM-ignoring one, then SIGKILL.
        assert wait_gone(tagged, timeout=15) == []
        assert tagged_pids(tag) == []
        assert wait_gone([reaper], timeout=10) == []
    finally:
        launcher.kill()
        kill_pids(tagged_pids(tag), grace=1)


def test_without_the_guard_the_same_processes_survive() -> None:
    """The control: the processes above outlive a SIGKILLed launcher on their own."""
    tag = uuid.uuid4().hex
    launcher, _ = start_launcher(tag, guarded=False)
    try:
        tagged = tagged_pids(tag)
        assert len(tagged) == 3
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        time.sleep(2)
        assert sorted(p for p in tagged if pid_alive(p)) == tagged
    finally:
        launcher.kill()
        kill_pids(tagged_pids(tag), grace=1)
    # SIGKILLed processes take a moment to be gone (longer on a loaded machine).
    assert wait_gone(tagged, timeout=15) == []
    assert tagged_pids(tag) == []


def test_closing_the_guard_lets_the_reaper_exit(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    guard = OrphanGuard(tag, tmp_path / "reaper.log", grace=1.0)
    guard.start()
    assert guard.process is not None
    reaper = guard.process.pid
    assert reaper not in tagged_pids(tag)  # it never stops itself
    env = {**os.environ, TAG_ENV: tag}
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"],
        env=env,
        start_new_session=True,
    )
    try:
        guard.close()  # this process is done, but forgot a tagged child
        assert not pid_alive(reaper)
        assert leftover.wait(timeout=15) != 0
        assert f"stopped tagged processes [{leftover.pid}]" in (
            (tmp_path / "reaper.log").read_text()
        )
    finally:
        leftover.kill()
        leftover.wait()


def test_guard_cannot_start_twice() -> None:
    with OrphanGuard(uuid.uuid4().hex) as guard, pytest.raises(RuntimeError):
        guard.start()


def test_listening_sockets_are_found_by_pid() -> None:
    import socket

    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4,
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6,
    ):
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::", 0))
        v6.listen()
        found = set(listening_sockets([os.getpid()]))
        port4, port6 = v4.getsockname()[1], v6.getsockname()[1]
    assert ListeningSocket(os.getpid(), "127.0.0.1", port4) in found
    assert ListeningSocket(os.getpid(), "::", port6) in found
    assert ListeningSocket(os.getpid(), "127.0.0.1", port4).loopback
    assert ListeningSocket(os.getpid(), "::ffff:127.0.0.1", 1).loopback
    assert not ListeningSocket(os.getpid(), "::", port6).loopback
    assert not ListeningSocket(os.getpid(), "0.0.0.0", 1).loopback
