"""No orphans: a watchdog process stops a launcher's processes when the launcher dies.

A launcher tags every process it starts with ``TAG_ENV=<tag>`` in the
environment (children and grandchildren inherit it, also the ones Flower
detaches into their own sessions, such as ``flower-superexec``, and Ray's
processes). :class:`OrphanGuard` starts ``python -m tooling.reaper`` in its own
session holding the read end of a pipe whose write end only the launcher holds.
However the launcher ends - normally, by an exception, or by ``SIGKILL`` - the
kernel closes that write end, the reaper reads end-of-file, and it stops every
process still carrying the tag: ``SIGTERM``, then ``SIGKILL`` after a grace
period, rescanning until none is left. Nothing is found or killed by name.

A parent-death signal (``PR_SET_PDEATHSIG``) would not do: it reaches only
direct children, and fires when the *thread* that started them exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tooling.procfs import TAG_ENV, pid_alive, tagged_pids

REPO_ROOT = Path(__file__).resolve().parent.parent


def kill_pids(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM ``pids``, wait up to ``grace`` seconds, then SIGKILL survivors."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def reap(tag: str, grace: float = 10.0, timeout: float = 120.0) -> list[int]:
    """Stop every process tagged ``tag`` (rescanning: some spawn others on exit).

    Returns
    -------
    list of int
        The PIDs that were signalled.
    """
    signalled: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = tagged_pids(tag)
        if not pids:
            break
        signalled += [pid for pid in pids if pid not in signalled]
        kill_pids(pids, grace)
    return signalled


class OrphanGuard:
    """Start a reaper that stops everything tagged ``tag`` once this process is gone.

    Use as a context manager (or :meth:`start` / :meth:`close`). Closing it
    (normal exit) lets the reaper sweep once and exit; if this process dies
    without closing it, the kernel closes the pipe for it.

    Parameters
    ----------
    tag
        The value of :data:`tooling.procfs.TAG_ENV` the launcher's processes carry.
    log_path
        Where the reaper writes what it stopped (discarded when ``None``).
    grace
        Seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self, tag: str, log_path: Path | None = None, grace: float = 10.0
    ) -> None:
        self.tag = tag
        self.log_path = log_path
        self.grace = grace
        self.process: subprocess.Popen | None = None
        self._write_fd: int | None = None

    def start(self) -> None:
        """Start the reaper process (in its own session, without the tag)."""
        if self.process is not None:
            raise RuntimeError("the orphan guard is already running")
        read_fd, write_fd = os.pipe()  # both ends non-inheritable (PEP 446)
        env = {k: v for k, v in os.environ.items() if k != TAG_ENV}
        cmd = [
            sys.executable,
            "-m",
            "tooling.reaper",
            "--fd",
            str(read_fd),
            "--tag",
            self.tag,
            "--grace",
            str(self.grace),
        ]
        with contextlib.ExitStack() as stack:
            log = (
                stack.enter_context(self.log_path.open("ab"))
                if self.log_path is not None
                else subprocess.DEVNULL
            )
            try:
                self.process = subprocess.Popen(
                    cmd,
                    pass_fds=(read_fd,),
                    cwd=REPO_ROOT,  # `-m tooling.reaper` imports from here
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            finally:
                os.close(read_fd)
        self._write_fd = write_fd

    def close(self, timeout: float = 60.0) -> None:
        """Tell the reaper this process is done; wait for its last sweep."""
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
            self.process = None

    def __enter__(self) -> OrphanGuard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Reaper process: block until the pipe closes, then stop the tagged processes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--grace", type=float, default=10.0)
    args = parser.parse_args(argv)
    # The launcher's terminal may send these to its whole session; only the
    # closed pipe ends the reaper.
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    while True:
        try:
            if not os.read(args.fd, 4096):
                break
        except InterruptedError:
            continue
    pids = reap(args.tag, grace=args.grace)
    if pids:
        print(
            f"reaper: launcher gone; stopped tagged processes {pids}",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
