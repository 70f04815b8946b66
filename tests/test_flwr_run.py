"""``flwr run .`` through the real CLI, as a new user runs it on a fresh clone.

The app directory is a copy of a clone (``pyproject.toml``, ``tracefl/``) in a
temporary folder, so the default output ``results/default`` lands there. The
only additions to the plain command are what keeps it private and offline
(fresh ``FLWR_HOME``, free ports for flwr's local SuperLink, no runtime
dependency installation, Ray on loopback - :class:`tooling.flwr_cli.FlwrSandbox`)
and ``-c`` values that keep it tiny. The federation is flwr 1.42's default:
2 simulated SuperNodes.

Every process the CLI started - including the detached local SuperLink, found
as the tagged process listening on its HTTP port - is stopped by PID afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tooling.flwr_cli import FlwrSandbox
from tooling.procfs import Observation, observe, pid_alive
from tracefl.run_status import COMPLETED, read_run_status

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
TINY = (
    "num-server-rounds=1 local-epochs=1 "
    "max-per-client-data-size=200 max-server-data-size=200"
)
FLWR_DEFAULT_PORTS = {39091, 39093}


def copy_app(dest: Path) -> Path:
    """The files a user's clone holds that ``flwr run .`` packages."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "tracefl", dest / "tracefl", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


class Sandboxed:
    """A sandbox, the app copy, and everything observed while commands ran."""

    def __init__(self, sandbox: FlwrSandbox, app: Path) -> None:
        self.sandbox = sandbox
        self.app = app
        self.seen = Observation()
        self.runs = 0

    def flwr_run(self, *args: str, timeout: float = 600) -> tuple[int, str, float]:
        """``flwr run . --stream <args>`` in the app dir; rc, output, seconds."""
        self.runs += 1
        log = self.app.parent / f"flwr-run-{self.runs}.log"
        start = time.monotonic()
        with log.open("w") as handle:
            proc = self.sandbox.popen(
                ["run", ".", "--stream", *args], cwd=self.app, stdout=handle
            )
            done = threading.Event()
            watcher = threading.Thread(
                target=observe,
                args=(self.sandbox.tag, done.is_set, 0.5, self.seen),
                daemon=True,
            )
            watcher.start()
            try:
                rc = proc.wait(timeout=timeout)
            finally:
                proc.kill()
                done.set()
                watcher.join()
        return rc, log.read_text(errors="replace"), time.monotonic() - start


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandboxed]:
    base = tmp_path_factory.mktemp("flwr-run")
    sandbox = FlwrSandbox(home=base / "flwr-home")
    with sandbox:
        yield Sandboxed(sandbox, copy_app(base / "app"))
        # What the README tells users: stop the detached SuperLink by its PID
        # (found by its port); its SuperExec and any run follow it.
        superlinks = sandbox.superlink_pids()
        assert len(superlinks) == 1
        left = sandbox.processes()
        assert superlinks[0] in left
        os.kill(superlinks[0], signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(pid_alive(p) for p in left):
            time.sleep(0.2)
        assert [p for p in left if pid_alive(p)] == []
    assert sandbox.processes() == []


def test_flwr_run_dot_completes_on_the_default_federation(cli: Sandboxed) -> None:
    rc, output, seconds = cli.flwr_run("-c", TINY)
    print(f"flwr run . took {seconds:.1f}s")
    assert rc == 0, output[-4000:]
    assert "2 simulated SuperNodes" in output

    out = cli.app / "results" / "default"  # the ServerApp runs in the SuperLink's cwd
    status = read_run_status(out)
    assert status.status == COMPLETED, status.describe() + "\n" + output[-4000:]
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["round"].tolist() == [1]
    assert rounds["num_participants"].tolist() == [2]
    assert (out / "accuracy.png").is_file()

    # flwr started a detached SuperLink on the private port; it outlives the run.
    (superlink,) = cli.sandbox.superlink_pids()
    assert pid_alive(superlink)
    assert cli.sandbox.superlink_log.is_file()
    assert (cli.sandbox.home / "local-superlink" / "state.db").is_file()
    ports = {s.port for s in cli.seen.sockets}
    assert cli.sandbox.http_port in ports
    assert not ports & FLWR_DEFAULT_PORTS
    # Loopback only: SuperLink, simulation, Ray's GCS/raylet/workers.
    assert cli.seen.not_loopback() == []
    assert len(cli.seen.sockets) >= 4


def test_flwr_run_exits_0_on_a_failed_run_and_run_status_says_so(
    cli: Sandboxed,
) -> None:
    rc, output, seconds = cli.flwr_run("-c", "run-name='bad' lr=-1")
    print(f"failing flwr run . took {seconds:.1f}s")
    assert rc == 0, output[-4000:]  # flwr's verdict: nothing wrong
    out = cli.app / "results" / "bad"
    check = subprocess.run(
        [sys.executable, "-m", "tracefl.run_status", str(out), "--wait", "30"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert check.returncode == 1, check.stdout + check.stderr
    status = read_run_status(out)
    # Waits for the ServerApp to record config errors (issue 12): until then
    # there is no run.json at all.
    assert status.status == "failed", status.describe()
    assert "'lr'" in (status.reason or "") + (status.error or "")
