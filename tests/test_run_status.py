"""The run.json status protocol: written truthfully, read so a kill is recognisable."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracefl import run_status
from tracefl.results_io import write_csv, write_json
from tracefl.run_status import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    MISSING,
    RUNNING,
    UNREADABLE,
    RunStatusWriter,
    process_identity,
    read_run_status,
    wait_for_final_status,
)

REPO = Path(__file__).resolve().parent.parent


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("run-status-")]


def wait_until(predicate, timeout: float = 20.0, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def run_json(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "out" / "run.json"
    assert heartbeat_threads() == [], "a heartbeat thread outlived its writer"


# ------------------------------------------------------------------ writer


def test_running_then_completed_with_process_identity(run_json: Path) -> None:
    with RunStatusWriter(run_json, {"config": {"seed": 1}}) as writer:
        live = read_run_status(run_json.parent)
        assert live.status == RUNNING and not live.inferred
        record = json.loads(run_json.read_text())
        assert record["process"]["pid"] == os.getpid()
        assert record["process"]["host"] == socket.gethostname()
        assert record["process"] == process_identity()
        assert record["finished"] is None
        writer.update(rounds_recorded=2)
        assert json.loads(run_json.read_text())["rounds_recorded"] == 2
        writer.complete(rounds_recorded=3)
    done = read_run_status(run_json)
    assert done.status == COMPLETED and done.completed
    assert done.reason is None and done.error is None
    assert done.record["config"] == {"seed": 1}
    assert done.record["rounds_recorded"] == 3
    assert done.record["protocol"] == run_status.PROTOCOL
    assert done.record["finished"] >= done.record["started"]
    assert run_status.exit_code(done) == 0


def test_exception_records_failed_and_propagates(run_json: Path) -> None:
    with pytest.raises(ValueError, match="bad weights"), RunStatusWriter(run_json):
        raise ValueError("bad weights\nsecond line")
    status = read_run_status(run_json)
    assert status.status == FAILED
    assert status.reason == "ValueError: bad weights"
    assert status.error == "ValueError: bad weights"
    assert run_status.exit_code(status) == 1


def test_explicit_fail_keeps_reason_and_last_error(run_json: Path) -> None:
    with RunStatusWriter(run_json) as writer:
        writer.fail("1 of 3 rounds recorded", RuntimeError("client 2 raised"))
    status = read_run_status(run_json)
    assert (status.status, status.reason, status.error) == (
        FAILED,
        "1 of 3 rounds recorded",
        "RuntimeError: client 2 raised",
    )
    assert "1 of 3 rounds recorded" in status.describe()
    assert "RuntimeError: client 2 raised" in status.describe()


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(143)])
def test_interrupt_records_interrupted(run_json: Path, exc: BaseException) -> None:
    with pytest.raises(type(exc)), RunStatusWriter(run_json):
        raise exc
    status = read_run_status(run_json)
    assert status.status == INTERRUPTED and not status.inferred


def test_leaving_without_a_final_status_is_never_completed(run_json: Path) -> None:
    with RunStatusWriter(run_json):
        pass
    status = read_run_status(run_json)
    assert status.status == FAILED
    assert "without recording a final status" in (status.reason or "")


def test_final_status_is_recorded_once(run_json: Path) -> None:
    with RunStatusWriter(run_json) as writer:
        writer.complete()
        with pytest.raises(RuntimeError, match="already records 'completed'"):
            writer.fail("late")
    assert read_run_status(run_json).status == COMPLETED


def test_protocol_keys_are_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        RunStatusWriter(tmp_path / "run.json", {"status": "completed"})
    with RunStatusWriter(tmp_path / "run.json") as writer:
        with pytest.raises(ValueError, match="heartbeat"):
            writer.update(heartbeat="x")
        writer.complete()


def test_bad_heartbeat_interval_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval must be > 0"):
        RunStatusWriter(tmp_path / "run.json", heartbeat_interval=0)


def test_heartbeat_refreshes_and_stops_with_the_final_status(run_json: Path) -> None:
    with RunStatusWriter(run_json, heartbeat_interval=0.05) as writer:
        first = json.loads(run_json.read_text())["heartbeat"]
        wait_until(lambda: json.loads(run_json.read_text())["heartbeat"] > first)
        assert len(heartbeat_threads()) == 1
        writer.complete()
        assert heartbeat_threads() == []
    final = run_json.read_text()
    time.sleep(0.3)  # six intervals: a live heartbeat would have rewritten it
    assert run_json.read_text() == final


def test_readers_never_see_a_partial_record(run_json: Path) -> None:
    with RunStatusWriter(
        run_json, {"blob": "x" * 200_000}, heartbeat_interval=0.001
    ) as writer:
        seen = {read_run_status(run_json).status for _ in range(300)}
        writer.complete()
    assert seen == {RUNNING}


def test_failing_heartbeat_write_is_kept_and_retried(run_json: Path) -> None:
    out = run_json.parent
    with RunStatusWriter(run_json, heartbeat_interval=0.05) as writer:
        out.rename(out.with_name("moved"))
        out.write_text("a file where the output folder was")
        wait_until(lambda: isinstance(writer.heartbeat_error, OSError))
        out.unlink()
        out.with_name("moved").rename(out)
        wait_until(lambda: writer.heartbeat_error is None)
        writer.complete()
    assert read_run_status(run_json).status == COMPLETED


# ------------------------------------------------------------------ reader

WRITER = """
import sys, time
from pathlib import Path
from tracefl.run_status import RunStatusWriter
writer = RunStatusWriter(Path(sys.argv[1]), heartbeat_interval=0.2)
writer.start()
print("running", flush=True)
time.sleep(120)
"""


def test_killed_writer_reads_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "running"
        live = read_run_status(path)
        assert live.status == RUNNING and not live.inferred
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    dead = read_run_status(path)
    assert dead.status == INTERRUPTED and dead.inferred
    assert f"process {proc.pid}" in (dead.reason or "")
    assert "exited without recording a final status" in (dead.reason or "")
    assert json.loads(path.read_text())["status"] == RUNNING  # the file is untouched


def record_from(heartbeat_age_s: float, **process: object) -> dict:
    """A running record as another process would have written it."""
    beat = datetime.now(UTC) - timedelta(seconds=heartbeat_age_s)
    return {
        "protocol": run_status.PROTOCOL,
        "status": RUNNING,
        "reason": None,
        "error": None,
        "started": beat.isoformat(),
        "finished": None,
        "heartbeat": beat.isoformat(),
        "heartbeat_interval_s": 5.0,
        "process": {"pid": 4242, "boot_id": None, "start_ticks": None} | process,
    }


def test_other_host_is_judged_by_its_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    elsewhere = socket.gethostname() + "-elsewhere"
    write_json(path, record_from(3, host=elsewhere))
    assert read_run_status(path).status == RUNNING
    write_json(path, record_from(61, host=elsewhere))
    stale = read_run_status(path)
    assert stale.status == INTERRUPTED and stale.inferred
    assert "no heartbeat" in (stale.reason or "")
    assert "bound 60s" in (stale.reason or "")
    assert read_run_status(path, stale_after=120).status == RUNNING


def test_reused_pid_or_reboot_reads_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    me = process_identity()
    assert me["start_ticks"] is not None and me["boot_id"]
    write_json(path, record_from(0, **me))
    assert read_run_status(path).status == RUNNING
    # Same PID, other start time: the PID now names another process.
    write_json(path, record_from(0, **(me | {"start_ticks": me["start_ticks"] - 1})))
    assert read_run_status(path).status == INTERRUPTED
    # Another boot of this host: nothing from before survives.
    write_json(path, record_from(0, **(me | {"boot_id": "another-boot"})))
    assert read_run_status(path).status == INTERRUPTED


def test_missing_and_unreadable_records(tmp_path: Path) -> None:
    assert read_run_status(tmp_path).status == MISSING
    (tmp_path / "run.json").write_text("{not json")
    assert read_run_status(tmp_path).status == UNREADABLE
    write_json(tmp_path / "run.json", {"status": "done"})
    bad = read_run_status(tmp_path)
    assert bad.status == UNREADABLE and "'done'" in (bad.reason or "")
    assert run_status.exit_code(bad) == 1


def test_wait_for_final_status_waits_while_running(run_json: Path) -> None:
    writer = RunStatusWriter(run_json, heartbeat_interval=0.05)
    writer.start()
    assert wait_for_final_status(run_json, timeout=0.0).status == RUNNING
    timer = threading.Timer(0.5, writer.complete)
    timer.start()
    try:
        assert wait_for_final_status(run_json, timeout=20.0).status == COMPLETED
    finally:
        timer.join()


def test_cli_exit_code_follows_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RunStatusWriter(tmp_path / "ok" / "run.json") as writer:
        writer.complete()
    assert run_status.main([str(tmp_path / "ok")]) == 0
    assert "run status: completed" in capsys.readouterr().out
    with RunStatusWriter(tmp_path / "bad" / "run.json") as writer:
        writer.fail("no round recorded")
    assert run_status.main([str(tmp_path / "bad" / "run.json")]) == 1
    assert "run status: failed - no round recorded" in capsys.readouterr().err
    assert run_status.main([str(tmp_path / "none")]) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "tracefl.run_status", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1 and "failed - no round recorded" in proc.stderr


# ------------------------------------------------------- result file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_result_files_follow_the_process_umask(
    tmp_path: Path, umask: int, mode: int
) -> None:
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "run.json", {"a": 1})
        write_csv(tmp_path / "rounds.csv", [{"a": 1}], ["a"])
        with RunStatusWriter(tmp_path / "status" / "run.json") as writer:
            writer.complete()
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "run.json",
        tmp_path / "rounds.csv",
        tmp_path / "status" / "run.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not list(tmp_path.rglob("*.tmp"))


def test_record_without_process_identity_is_running_but_says_unknown(
    tmp_path: Path,
) -> None:
    write_json(tmp_path / "run.json", {"status": "running", "started": "2020-01-01"})
    status = read_run_status(tmp_path)
    assert status.status == RUNNING and not status.inferred
    assert "unknown" in (status.reason or "")
