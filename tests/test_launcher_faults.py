"""Fault injection through real Flower processes: what a launcher must report.

Each test runs the real TraceFL ServerApp with a deliberately faulty ClientApp
(:mod:`tooling.fault_harness`) on one private simulation SuperLink shared by
the module, or a real launcher subprocess (SIGKILL, full disk), and checks the
launcher-side facts: the exit code follows the ``run.json`` status, the status
is never ``completed`` when the run did not record every round, and nothing
the launcher started survives it.

Assertions marked ``# ServerApp (issue 12)`` need the ServerApp side of issue
12 (reply validation, a failed status for every error, plotting failures
recorded) and fail until it lands.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tooling.fault_harness import (
    ClientFault,
    launcher_command,
    marked_pids,
    small_tmpfs_command,
    start_launcher,
    write_faulty_app,
)
from tooling.flower_local import LocalSuperLink
from tracefl.run_status import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    RunStatus,
    exit_code,
    read_run_status,
)

pytestmark = pytest.mark.e2e

TINY: dict[str, Any] = {
    "num-clients": 3,
    "num-server-rounds": 1,
    "local-epochs": 1,
    "max-per-client-data-size": 200,
    "max-server-data-size": 200,
    "provenance-max-inputs": 8,
    "feddebug": False,
    "device": "cpu",
    "plots": False,
}


@dataclass
class Outcome:
    rc: int
    status: RunStatus
    out: Path
    log: str
    seconds: float

    def rounds(self) -> pd.DataFrame:
        return pd.read_csv(self.out / "rounds.csv")


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    base = tmp_path_factory.mktemp("faults")
    with LocalSuperLink(workdir=base, log_dir=base / "logs") as superlink:
        yield superlink
    assert superlink.leftover_pids() == []


def run_faulty(
    link: LocalSuperLink, tmp_path: Path, faults: list[ClientFault], **config: Any
) -> Outcome:
    app = write_faulty_app(tmp_path / "app", faults)
    out = tmp_path / "out"
    run_config = {**TINY, **config, "output-dir": str(out)}
    log_path = tmp_path / "flwr-run.log"
    start = time.monotonic()
    with log_path.open("w") as log:
        rc = link.run_app(
            run_config,
            num_supernodes=int(run_config["num-clients"]),
            app_dir=app,
            stdout=log,
            timeout=900,
        )
    seconds = time.monotonic() - start
    print(f"{len(faults)} fault(s): rc {rc} after {seconds:.1f}s")
    outcome = Outcome(rc, read_run_status(out), out, log_path.read_text(), seconds)
    # The launcher's verdict is the recorded status, whatever it is.
    assert outcome.rc == exit_code(outcome.status), outcome.status.describe()
    return outcome


def participants(outcome: Outcome, round_: int) -> str:
    rounds = outcome.rounds()
    return str(rounds.loc[rounds["round"] == round_, "participants"].item())


# ------------------------------------------------------------ faulty clients


def test_every_client_fails(link: LocalSuperLink, tmp_path: Path) -> None:
    outcome = run_faulty(link, tmp_path, [ClientFault("raise")])
    assert "injected fault" in outcome.log  # the faulty app really ran
    assert outcome.status.status == FAILED, (
        outcome.status.describe()
    )  # ServerApp (issue 12)
    assert outcome.rc == 1


def test_every_reply_dropped_by_round_timeout(
    link: LocalSuperLink, tmp_path: Path
) -> None:
    outcome = run_faulty(link, tmp_path, [], **{"round-timeout": 0.001})
    assert outcome.status.status == FAILED, (
        outcome.status.describe()
    )  # ServerApp (issue 12)
    assert outcome.rc == 1


def test_one_client_raises_in_round_2(link: LocalSuperLink, tmp_path: Path) -> None:
    outcome = run_faulty(
        link,
        tmp_path,
        [ClientFault("raise", partitions=(1,), rounds=(2,))],
        **{"num-server-rounds": 2, "min-train-nodes": 2},
    )
    assert "partition 1 raises in round 2" in outcome.log
    assert outcome.status.status == COMPLETED, outcome.status.describe()
    assert outcome.rc == 0
    assert participants(outcome, 1) == "0;1;2"
    assert participants(outcome, 2) == "0;2"


def test_one_client_sends_nan(link: LocalSuperLink, tmp_path: Path) -> None:
    outcome = run_faulty(
        link,
        tmp_path,
        [ClientFault("nan", partitions=(0,), rounds=(1,))],
        **{"num-server-rounds": 2},
    )
    # ServerApp (issue 12): the NaN reply is rejected, the model stays finite.
    assert outcome.status.status == COMPLETED, outcome.status.describe()
    assert participants(outcome, 1) == "1;2"
    assert participants(outcome, 2) == "0;1;2"
    assert outcome.rounds()["test_accuracy"].notna().all()


def test_one_client_sends_a_wrong_shape(link: LocalSuperLink, tmp_path: Path) -> None:
    outcome = run_faulty(link, tmp_path, [ClientFault("wrong-shape", partitions=(2,))])
    # ServerApp (issue 12): excluded and named, instead of a numpy broadcast error.
    assert outcome.status.status == COMPLETED, outcome.status.describe()
    assert participants(outcome, 1) == "0;1"


def test_every_bad_reply_kind_is_excluded(link: LocalSuperLink, tmp_path: Path) -> None:
    kinds = [
        "inf",
        "wrong-dtype",
        "missing-array",
        "extra-array",
        "zero-examples",
        "negative-label-counts",
        "label-counts-length",
        "missing-attribution",
    ]
    faults = [ClientFault(kind, partitions=(i,)) for i, kind in enumerate(kinds)]
    n = len(kinds) + 2  # two healthy clients
    outcome = run_faulty(
        link,
        tmp_path,
        faults,
        **{"num-clients": n, "min-train-nodes": 2, "dirichlet-alpha": 100.0},
    )
    # ServerApp (issue 12): every bad reply rejected, the two healthy ones fused.
    assert outcome.status.status == COMPLETED, outcome.status.describe()
    assert participants(outcome, 1) == f"{n - 2};{n - 1}"


def test_one_client_sleeps_past_round_timeout(
    link: LocalSuperLink, tmp_path: Path
) -> None:
    """The round closes at round-timeout without the sleeper's reply.

    The timeout must cover a cold start of Ray's actors (30 s was too short on
    a loaded 2-core machine). Flower's simulation still waits for the sleeping
    ClientApp before the run ends (``flwr run`` returns after it), so the sleep
    is only a little longer than the timeout.
    """
    outcome = run_faulty(
        link,
        tmp_path,
        [ClientFault("sleep", partitions=(2,), seconds=70.0)],
        **{"round-timeout": 60.0, "min-train-nodes": 2},
    )
    assert outcome.status.status == COMPLETED, outcome.status.describe()
    assert outcome.rc == 0
    assert participants(outcome, 1) == "0;1"


# ------------------------------------------------------------------- launcher


def wait_gone(mark: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and marked_pids(mark):
        time.sleep(0.5)
    return marked_pids(mark)


def test_sigkilled_launcher_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = launcher_command(
        {**TINY, "num-server-rounds": 50, "output-dir": str(out)},
        "--log-dir",
        str(tmp_path / "logs"),
    )
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        launcher, mark = start_launcher(cmd, stdout=log)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (out / "rounds.csv").exists():
                assert launcher.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.5)
            assert (out / "rounds.csv").exists(), "no round finished in time"
            running = marked_pids(mark)
            assert len(running) >= 6  # SuperLink, SuperExec, simulation, Ray...
            assert read_run_status(out).status == "running"
            os.kill(launcher.pid, signal.SIGKILL)
            assert launcher.wait(timeout=30) == -signal.SIGKILL
            assert wait_gone(mark, timeout=90) == []
        finally:
            launcher.kill()
    assert "stopped tagged processes" in (tmp_path / "logs" / "reaper.log").read_text()
    status = read_run_status(out)
    assert status.status == INTERRUPTED, status.describe()  # ServerApp (issue 12)


@pytest.mark.parametrize(
    ("fill_kib", "plots"),
    [
        pytest.param(1023, False, id="full-from-the-start"),
        pytest.param(984, True, id="full-at-plotting"),
    ],
)
def test_full_disk_is_never_completed(
    tmp_path: Path, fill_kib: int, plots: bool
) -> None:
    out = tmp_path / "out"
    copied = tmp_path / "copied"
    cmd = small_tmpfs_command(
        launcher_command({**TINY, "plots": plots, "output-dir": str(out)}),
        out,
        size_kib=1024,
        fill_kib=fill_kib,
        copy_out=copied,
    )
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        launcher, mark = start_launcher(cmd, stdout=log)
        rc = launcher.wait(timeout=600)
    text = log_path.read_text()
    assert "No space left on device" in text, text[-3000:]
    assert "run status: " in text and "logs: " in text, text[-3000:]
    assert wait_gone(mark, timeout=30) == []
    status = read_run_status(copied)
    assert status.status != COMPLETED, status.describe()  # ServerApp (issue 12)
    assert rc == 1, text[-3000:]
    assert not list(copied.glob(".*.tmp"))
