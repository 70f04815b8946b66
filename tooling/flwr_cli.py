"""The real ``flwr`` CLI, sandboxed: fresh FLWR_HOME, free ports, processes by PID.

``flwr run .`` with the default ``local`` connection starts a *detached*
``flower-superlink`` (simulation mode, its own session, SQLite state in
``$FLWR_HOME/local-superlink/state.db``, log in ``.../superlink.log``) on fixed
ports - ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` (default 39091) and
``FLWR_LOCAL_CONTROL_API_PORT`` (default 39093), read by flwr 1.42 when the CLI
starts (``flwr.cli.constant``) - and leaves it running after the run; flwr
writes no PID file. :class:`FlwrSandbox` gives the CLI a fresh ``FLWR_HOME``,
free ports for both variables, runtime dependency installation disabled and
:data:`tooling.flower_local.LOOPBACK_ENV`, tags every process in the
environment, and finds the detached SuperLink as the tagged process listening
on the HTTP port. :meth:`FlwrSandbox.stop` stops every tagged process by PID,
and an :class:`~tooling.reaper.OrphanGuard` does so if this process dies.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from tooling.flower_local import flower_env, free_port
from tooling.procfs import pids_listening_on, tagged_pids
from tooling.reaper import OrphanGuard, kill_pids


class FlwrSandbox:
    """Run ``flwr`` commands against a private, lazily started local SuperLink.

    Parameters
    ----------
    home
        ``FLWR_HOME`` (a fresh temporary directory when ``None``; removed by
        :meth:`stop` only if created here).
    """

    def __init__(self, home: Path | None = None) -> None:
        self._own_home = home is None
        self.home = Path(home or tempfile.mkdtemp(prefix="tracefl-flwr-cli-home-"))
        self.http_port = free_port()
        self.control_port = free_port()
        self.tag = uuid.uuid4().hex
        self._guard = OrphanGuard(self.tag)

    def __enter__(self) -> FlwrSandbox:
        self._guard.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def superlink_log(self) -> Path:
        """Where flwr's local SuperLink logs (``$FLWR_HOME/local-superlink``)."""
        return self.home / "local-superlink" / "superlink.log"

    def env(self) -> dict[str, str]:
        """Environment for ``flwr``: private home and ports, offline, loopback."""
        return flower_env(self.home, self.http_port, self.control_port, self.tag)

    def popen(
        self, args: Sequence[str], cwd: Path, stdout: IO[str] | int | None = None
    ) -> subprocess.Popen:
        """Start ``flwr <args>`` in ``cwd`` (output to ``stdout``, stderr merged)."""
        flwr = Path(sys.executable).parent / "flwr"
        return subprocess.Popen(
            [str(flwr) if flwr.exists() else "flwr", *args],
            cwd=cwd,
            env=self.env(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def processes(self) -> list[int]:
        """Live processes started through this sandbox (directly or not)."""
        return tagged_pids(self.tag)

    def superlink_pids(self) -> list[int]:
        """PIDs of the detached local SuperLink: tagged and listening on its port."""
        mine = set(self.processes())
        return [pid for pid in pids_listening_on(self.http_port) if pid in mine]

    def stop(self, grace: float = 10.0) -> None:
        """Stop every tagged process (SuperLink, SuperExec, runs) by PID."""
        pids = self.processes()
        if pids:
            kill_pids(pids, grace)
        self._guard.close()
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)
