"""The ``run.json`` status protocol: what a run is doing, written so it is always true.

The ServerApp writes, launchers and users read. ``flwr run`` exits 0 even when
the ServerApp fails, so this record - not an exit code - says how a run ended.

Schema (``run.json``; app fields such as ``config`` sit beside these keys)::

    status                "running" | "completed" | "failed" | "interrupted"
    reason                why it failed or was interrupted (null otherwise)
    error                 the last error, "Type: message" (null if none)
    started, finished     ISO-8601 UTC times (finished: null while running)
    heartbeat             ISO-8601 UTC time, refreshed while running
    heartbeat_interval_s  seconds between heartbeats
    process               {"pid", "host", "boot_id", "start_ticks"} of the writer
    protocol              "tracefl.run-status/1"

:class:`RunStatusWriter` records ``running`` with the writer's process identity
and keeps a heartbeat fresh from a daemon thread; it ends with ``completed``,
``failed`` or ``interrupted``, never ``completed`` by default. A process that is
killed cannot write its end, so :func:`read_run_status` turns a ``running``
record whose process is gone (same host: the PID is dead, or reused by another
process; another host: no heartbeat for ``stale_after`` seconds) into
``interrupted``. A crash, a kill and a live run therefore never look the same.

Command line: ``python -m tracefl.run_status results/default`` prints the status
and exits 0 only when the run completed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from tracefl.results_io import write_json

PROTOCOL = "tracefl.run-status/1"

RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
INTERRUPTED = "interrupted"
#: Statuses a writer records.
STATUSES = (RUNNING, COMPLETED, FAILED, INTERRUPTED)
#: Reader-only: no ``run.json`` at the path.
MISSING = "missing"
#: Reader-only: ``run.json`` is not a status record (not JSON, unknown status).
UNREADABLE = "unreadable"

DEFAULT_HEARTBEAT_S = 5.0
#: A running record from another host is stale after this many heartbeats.
STALE_HEARTBEATS = 12

#: Keys the writer owns; app fields must not use them.
RESERVED_KEYS = frozenset(
    {
        "status",
        "reason",
        "error",
        "started",
        "finished",
        "heartbeat",
        "heartbeat_interval_s",
        "process",
        "protocol",
    }
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _boot_id() -> str | None:
    """Id of the running kernel boot (Linux); tells a rebooted host apart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), ``None`` if unknown.

    Together with the PID it names one process: a reused PID has another value.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name start at field 3 (state);
    # starttime is field 22.
    return int(stat.rpartition(")")[2].split()[19])


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """The ``process`` block for ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(pid),
    }


def _error_text(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class RunStatusWriter:
    """Write ``run.json`` for one run: ``running`` with a heartbeat, then its end.

    Parameters
    ----------
    path
        The ``run.json`` file (its folder is created when missing).
    fields
        App fields stored beside the protocol keys (e.g. ``config``,
        ``versions``); keys of :data:`RESERVED_KEYS` are rejected.
    heartbeat_interval
        Seconds between heartbeat writes (> 0).

    Use as a context manager: entering writes ``running`` and starts the
    heartbeat; leaving with an ``Exception`` records ``failed``, with a
    ``KeyboardInterrupt``/``SystemExit`` ``interrupted``, and leaving normally
    without :meth:`complete` or :meth:`fail` records ``failed`` ("ended without
    a final status") - a run is never reported completed by default. The
    exception always propagates.

    Every write is atomic (:func:`tracefl.results_io.write_json`). A failing
    heartbeat write (e.g. ``ENOSPC``) is kept in :attr:`heartbeat_error` and
    retried at the next beat; a failing final write raises ``OSError`` (when
    leaving on an exception, it is added as a note to that exception instead).
    """

    def __init__(
        self,
        path: Path,
        fields: Mapping[str, Any] | None = None,
        *,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_S,
    ) -> None:
        if not heartbeat_interval > 0:
            raise ValueError(
                f"heartbeat_interval must be > 0 seconds, got {heartbeat_interval!r}."
            )
        self.path = Path(path)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_error: OSError | None = None
        self._record: dict[str, Any] = {}
        self._check_fields(fields or {})
        self._record.update(fields or {})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Record ``running`` now and start the heartbeat thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self.path} is already being written.")
        now = _now()
        self._record.update(
            protocol=PROTOCOL,
            status=RUNNING,
            reason=None,
            error=None,
            started=now,
            finished=None,
            heartbeat=now,
            heartbeat_interval_s=self.heartbeat_interval,
            process=process_identity(),
        )
        with self._lock:
            write_json(self.path, self._record)
        self._thread = threading.Thread(
            target=self._beat, name=f"run-status-heartbeat:{self.path}", daemon=True
        )
        self._thread.start()

    def update(self, **fields: Any) -> None:
        """Merge app fields (JSON-serialisable values) and rewrite ``run.json``."""
        self._check_fields(fields)
        with self._lock:
            self._record.update(fields)
            if not self._finished and self._thread is not None:
                write_json(self.path, self._record)

    def complete(self, **fields: Any) -> None:
        """Record ``completed`` (the caller has checked every round was recorded)."""
        self._finish(COMPLETED, None, None, fields)

    def fail(
        self, reason: str, error: BaseException | str | None = None, **fields: Any
    ) -> None:
        """Record ``failed`` with a one-line ``reason`` and the last ``error``."""
        self._finish(FAILED, reason, error, fields)

    def interrupt(
        self, reason: str, error: BaseException | str | None = None, **fields: Any
    ) -> None:
        """Record ``interrupted`` (the run was stopped from outside)."""
        self._finish(INTERRUPTED, reason, error, fields)

    @property
    def finished(self) -> bool:
        """Whether a final status has been recorded."""
        return self._finished

    @property
    def record(self) -> dict[str, Any]:
        """A copy of what the writer holds (the last content written or to write)."""
        with self._lock:
            return json.loads(json.dumps(self._record, default=str))

    def __enter__(self) -> RunStatusWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            self._stop_heartbeat()
            return
        if exc is None:
            self.fail("the run ended without recording a final status")
            return
        status = FAILED if isinstance(exc, Exception) else INTERRUPTED
        try:
            self._finish(status, _error_text(exc), exc, {})
        except OSError as write_err:
            exc.add_note(f"run.json could not record '{status}': {write_err!r}")

    # -------------------------------------------------------------- private

    @staticmethod
    def _check_fields(fields: Mapping[str, Any]) -> None:
        clash = sorted(RESERVED_KEYS.intersection(fields))
        if clash:
            raise ValueError(
                f"run.json keys {clash} belong to the status protocol; "
                "use complete()/fail()/interrupt() to set them."
            )

    def _finish(
        self,
        status: str,
        reason: str | None,
        error: BaseException | str | None,
        fields: Mapping[str, Any],
    ) -> None:
        self._check_fields(fields)
        if self._thread is None:
            raise RuntimeError("start() the writer before recording a final status.")
        if self._finished:
            raise RuntimeError(
                f"{self.path} already records '{self._record['status']}'."
            )
        self._stop_heartbeat()
        with self._lock:
            self._finished = True
            self._record.update(fields)
            self._record.update(
                status=status,
                reason=reason,
                error=_error_text(error) if isinstance(error, BaseException) else error,
                finished=_now(),
            )
            write_json(self.path, self._record)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            with self._lock:
                if self._finished:
                    return
                self._record["heartbeat"] = _now()
                try:
                    write_json(self.path, self._record)
                    self.heartbeat_error = None
                except OSError as err:
                    self.heartbeat_error = err


@dataclass(frozen=True)
class RunStatus:
    """A run's status as read from ``run.json`` (see :func:`read_run_status`).

    Attributes
    ----------
    status
        One of :data:`STATUSES`, or :data:`MISSING` / :data:`UNREADABLE`.
    reason
        Why it failed or was interrupted (the reader's own words when it
        inferred ``interrupted``).
    error
        The last error the run recorded, if any.
    inferred
        ``True`` when the record says ``running`` but its process is gone.
    heartbeat_age_s
        Seconds since the last heartbeat (``None`` without one).
    """

    path: Path
    status: str
    reason: str | None = None
    error: str | None = None
    inferred: bool = False
    heartbeat_age_s: float | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def completed(self) -> bool:
        """Whether the run completed (the only status that is a success)."""
        return self.status == COMPLETED

    def describe(self) -> str:
        """One line for people: status, reason, last error and the file."""
        text = f"run status: {self.status}"
        if self.reason:
            text += f" - {self.reason}"
        if self.error and self.error != self.reason:
            text += f" (last error: {self.error})"
        return f"{text} [{self.path}]"


def _resolve(path: Path) -> Path:
    path = Path(path)
    return path / "run.json" if path.is_dir() else path


def _parse_time(stamp: Any) -> datetime | None:
    try:
        then = datetime.fromisoformat(str(stamp))
    except ValueError:
        return None
    return then if then.tzinfo is not None else then.replace(tzinfo=UTC)


def _age_s(stamp: Any) -> float | None:
    then = _parse_time(stamp)
    return None if then is None else (datetime.now(UTC) - then).total_seconds()


def _process_gone(process: Mapping[str, Any]) -> bool | None:
    """Whether the writer is gone; ``None`` when this host cannot tell."""
    if process.get("host") != socket.gethostname():
        return None
    recorded_boot = process.get("boot_id")
    if recorded_boot and _boot_id() and recorded_boot != _boot_id():
        return True  # the host rebooted since
    pid = process.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    if _zombie(pid):
        return True
    recorded_ticks = process.get("start_ticks")
    ticks = _start_ticks(pid)
    return recorded_ticks is not None and ticks is not None and ticks != recorded_ticks


def read_run_status(
    path: Path,
    *,
    stale_after: float | None = None,
    started_after: datetime | None = None,
) -> RunStatus:
    """Read a run's status; ``running`` whose process is gone reads ``interrupted``.

    Parameters
    ----------
    path
        ``run.json`` or the output folder holding it.
    stale_after
        Seconds without a heartbeat after which a ``running`` record written on
        another host counts as interrupted (default: 12 heartbeat intervals).
        On the writer's own host the process itself is checked instead.
    started_after
        A launcher's start time (aware datetime): a record of a run that
        started before it belongs to an earlier run and reads as ``missing``.
    """
    path = _resolve(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RunStatus(
            path,
            MISSING,
            reason="no run.json: the run never started or failed before writing it",
        )
    except OSError as err:
        return RunStatus(path, UNREADABLE, reason=f"cannot read {path}: {err}")
    try:
        record = json.loads(text)
    except ValueError as err:
        return RunStatus(path, UNREADABLE, reason=f"{path} is not JSON: {err}")
    status = record.get("status") if isinstance(record, dict) else None
    if status not in STATUSES:
        return RunStatus(
            path,
            UNREADABLE,
            reason=f"{path} holds status {status!r}, not one of {', '.join(STATUSES)}",
            record=record if isinstance(record, dict) else {},
        )
    if started_after is not None:
        started = _parse_time(record.get("started"))
        if started is None or started < started_after:
            return RunStatus(
                path,
                MISSING,
                reason=f"{path} is from an earlier run (started "
                f"{record.get('started')}, before {started_after.isoformat()})",
                record=record,
            )
    age = _age_s(record.get("heartbeat"))
    result = RunStatus(
        path,
        status,
        reason=record.get("reason"),
        error=record.get("error"),
        heartbeat_age_s=age,
        record=record,
    )
    if status != RUNNING:
        return result
    process = record.get("process")
    if not isinstance(process, dict):
        return RunStatus(
            path,
            RUNNING,
            reason="the record names no process (written without the status "
            "protocol): whether the run still lives is unknown",
            heartbeat_age_s=age,
            record=record,
        )
    who = f"process {process.get('pid')} on host {process.get('host')}"
    gone = _process_gone(process)
    if gone:
        return _interrupted(result, f"{who} exited without recording a final status")
    if gone is None:
        interval = float(record.get("heartbeat_interval_s") or DEFAULT_HEARTBEAT_S)
        bound = stale_after if stale_after is not None else STALE_HEARTBEATS * interval
        if age is None or age > bound:
            shown = "ever" if age is None else f"{age:.0f}s"
            return _interrupted(
                result,
                f"no heartbeat from {who} for {shown} (bound {bound:.0f}s)",
            )
    return result


def _interrupted(result: RunStatus, reason: str) -> RunStatus:
    return RunStatus(
        result.path,
        INTERRUPTED,
        reason=reason,
        error=result.error,
        inferred=True,
        heartbeat_age_s=result.heartbeat_age_s,
        record=result.record,
    )


def wait_for_final_status(
    path: Path,
    timeout: float,
    *,
    poll: float = 0.5,
    stale_after: float | None = None,
    started_after: datetime | None = None,
) -> RunStatus:
    """Read the status, waiting up to ``timeout`` s while the run is still ``running``.

    Launchers call this once ``flwr run`` has returned: the ServerApp may still
    be writing its last record. Keywords as in :func:`read_run_status`.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = read_run_status(
            path, stale_after=stale_after, started_after=started_after
        )
        if status.status != RUNNING or time.monotonic() >= deadline:
            return status
        time.sleep(poll)


def exit_code(status: RunStatus) -> int:
    """Process exit code for a launcher: 0 only when the run completed, else 1."""
    return 0 if status.completed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print a run's status; exit 0 only when it completed."""
    parser = argparse.ArgumentParser(
        prog="python -m tracefl.run_status",
        description="Print a TraceFL run's status from its run.json; exit 0 only "
        "when it completed (flwr run itself exits 0 even when the run failed).",
    )
    parser.add_argument("path", type=Path, help="run.json or the run's output folder")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to SECONDS while the run is still running",
    )
    args = parser.parse_args(argv)
    status = wait_for_final_status(args.path, args.wait)
    print(status.describe(), file=sys.stdout if status.completed else sys.stderr)
    return exit_code(status)


if __name__ == "__main__":
    raise SystemExit(main())
