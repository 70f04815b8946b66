"""Run the app on a private local SuperLink: free ports, own FLWR_HOME, stopped by PID.

``flwr run`` alone starts a detached SuperLink on fixed ports that outlives the
run and, unless told otherwise, ``uv sync``s the app's dependencies into a fresh
venv. :class:`LocalSuperLink` avoids both: it starts ``flower-superlink`` itself
(simulation or deployment mode) on a free loopback port with runtime dependency
installation disabled, points the ``flwr`` CLI at it through a private
``FLWR_HOME``, and stops every process it started - by PID and process group,
also on errors and interrupts.

In flwr 1.42 one HTTP port (``--host``/``--port``) serves the SuperLink's
Runtime, Control *and* Fleet APIs: ``flwr`` (Control) and ``flower-supernode
--superlink`` (Fleet) both talk to it.

Deployment mode (``simulation=False``) starts real ``flower-supernode``
processes, each with its own ``partition-id``/``num-partitions`` node config and
a free port for its ClientApp runtime API.

Every process started here carries a private tag in its environment
(:data:`tooling.procfs.TAG_ENV`); Flower detaches some of them (``flower-superexec``)
into their own sessions, so :meth:`LocalSuperLink.stop` also stops any tagged
process that escaped the process groups, by PID, and an
:class:`~tooling.reaper.OrphanGuard` does the same if this process is killed.

Loopback only: the SuperLink and SuperNodes bind ``127.0.0.1``, and Ray (the
simulation backend) is started with :data:`LOOPBACK_ENV`, which makes its GCS,
raylet, workers and agents bind ``127.0.0.1`` instead of every interface.

``flwr run --stream`` exits 0 even when the ServerApp fails, so a run's verdict
is its ``run.json`` (:mod:`tracefl.run_status`): :meth:`LocalSuperLink.run_app`
returns 0 only when the run completed and prints the status, the reason and
where the logs are otherwise.

Command line (used by ``run.sh``, ``deploy_local.sh`` and the experiment
scripts)::

    python -m tooling.flower_local --num-supernodes 10 -c num-server-rounds=3
    python -m tooling.flower_local --deployment 3 -c num-server-rounds=2

Exit codes: 0 the run completed; 1 it did not (failed, interrupted, no status);
2 invalid arguments or run config (nothing was started); 124 ``--timeout``
reached; 128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tooling.procfs import TAG_ENV, pid_alive, tagged_pids
from tooling.reaper import OrphanGuard, kill_pids
from tooling.run_config_args import (
    RunConfigArgError,
    config_args,
    parse_assignments,
    toml_value,
)
from tracefl.config import (
    ConfigError,
    check_federation,
    output_dir_of,
    parse_run_config,
)
from tracefl.data_check import check_data_inputs
from tracefl.output_dir import OutputDirInUseError, check_output_dir
from tracefl.run_status import RunStatus, wait_for_final_status
from tracefl.sources.raw import DataUnavailableError

__all__ = [
    "LOOPBACK_ENV",
    "TAG_ENV",
    "LocalSuperLink",
    "config_args",
    "free_port",
    "interrupt_as_exit",
    "kill_pids",
    "main",
    "parse_assignments",
    "pid_alive",
    "run_deployment",
    "run_json_path",
    "tagged_pids",
    "toml_value",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment that keeps Ray on the loopback interface. Ray 2.55 picks the
#: node IP with ``ray._private.services.get_node_ip_address``: with "Ray
#: clusters" disabled (this variable, meant for Windows/macOS, works on every
#: platform) it is ``127.0.0.1`` and GCS, raylet, core workers and the runtime
#: env agent listen there; otherwise on the host's address and on ``::``
#: (measured). Ray's ``_node_ip_address="127.0.0.1"`` would not help: Ray
#: rewrites a loopback address to the host's address.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

#: Seconds a launcher waits for the ServerApp's final ``run.json`` record after
#: ``flwr run`` returned.
STATUS_SETTLE_S = 30.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """Path of a console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def stop_processes(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop ``procs`` and their process groups (each started in a new session).

    All get SIGTERM at once (in the given order); whatever still runs after
    ``grace`` seconds gets SIGKILL. Exited processes are skipped.
    """
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for proc in live:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and its process group (started with a new session)."""
    stop_processes([proc], grace)


def run_json_path(run_config: Mapping[str, Any], workdir: Path = REPO_ROOT) -> Path:
    """Where the ServerApp of ``run_config`` writes ``run.json``.

    ``workdir`` is the SuperLink's working directory, against which a relative
    ``output-dir`` resolves. Works for an invalid run config too (its
    ``output-dir``/``run-name``, when strings, still say where the ServerApp
    records the failure).
    """
    out_dir = output_dir_of(run_config, workdir)
    if out_dir is None:  # no safe place: the ServerApp records nothing either
        return workdir / "results" / "default" / "run.json"
    return out_dir / "run.json"


def flower_env(
    home: Path, http_port: int, control_port: int, tag: str
) -> dict[str, str]:
    """Environment for ``flwr`` and the processes it starts.

    A private ``FLWR_HOME`` and ports, no runtime dependency installation or
    update check, every process tagged with ``tag`` (found and stopped by PID
    later) and the running Python's ``bin/`` first on ``PATH`` (the SuperLink
    spawns ``flower-superexec``/``flwr-serverapp`` by name).
    :data:`LOOPBACK_ENV` applies unless the caller's environment sets those
    variables itself.
    """
    env = {**LOOPBACK_ENV, **os.environ}
    env.update(
        {
            "FLWR_HOME": str(home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            TAG_ENV: tag,
            "PATH": os.pathsep.join(
                [str(Path(sys.executable).parent), env.get("PATH", "")]
            ),
        }
    )
    return env


@dataclass
class LocalSuperLink:
    """A SuperLink on a free 127.0.0.1 port, owned (and stopped) by this object.

    Parameters
    ----------
    simulation
        ``True`` runs Flower's simulation runtime inside the SuperLink;
        ``False`` starts a deployment SuperLink that real SuperNodes join
        (see :meth:`start_supernode`).
    workdir
        Working directory of the SuperLink (and so of the ServerApp): relative
        ``output-dir`` values resolve against it.
    log_dir
        Where ``superlink.log``, ``supernode-<i>.log``, ``flwr-run.log`` and
        ``reaper.log`` go (a temporary directory when ``None``).

    """

    simulation: bool = True
    workdir: Path = REPO_ROOT
    log_dir: Path | None = None
    home: Path = field(init=False)
    http_port: int = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex, init=False)
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    supernodes: dict[int, subprocess.Popen] = field(default_factory=dict, init=False)
    _logs: contextlib.ExitStack = field(
        default_factory=contextlib.ExitStack, init=False
    )
    _guard: OrphanGuard | None = field(default=None, init=False)

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet, Control and Runtime APIs)."""
        return f"127.0.0.1:{self.http_port}"

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Start ``flower-superlink`` and wait until its HTTP API answers."""
        self.home = Path(tempfile.mkdtemp(prefix="tracefl-flwr-home-"))
        self.log_dir = Path(
            self.log_dir or tempfile.mkdtemp(prefix="tracefl-flwr-logs-")
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # First of all: whatever happens to this process, nothing outlives it.
        self._guard = OrphanGuard(self.tag, self.log_dir / "reaper.log")
        self._guard.start()
        self.http_port = free_port()
        cmd = [
            _bin("flower-superlink"),
            "--insecure",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--database",
            ":flwr-in-memory:",
            "--disable-runtime-dependency-installation",
        ]
        if self.simulation:
            cmd.append("--simulation")
        self._write_flower_config()
        self.processes.append(self._spawn(cmd, "superlink.log"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"flower-superlink exited early; see {self.log_dir}/superlink.log"
                )
            if self._healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"SuperLink did not start within {timeout:.0f}s.")

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process this object started (SuperNodes first), by PID.

        Each process is stopped with its process group; afterwards any process
        still carrying this object's tag (e.g. a detached ``flower-superexec``)
        is stopped by PID too.
        """
        stop_processes(list(reversed(self.processes)), grace)
        self.processes.clear()
        self.supernodes.clear()
        leftovers = tagged_pids(self.tag)
        if leftovers:
            kill_pids(leftovers, grace)
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        self._logs.close()
        if getattr(self, "home", None) is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Live processes started (directly or not) by this object."""
        pids = {p.pid for p in self.processes if p.poll() is None}
        pids.update(tagged_pids(self.tag))
        return sorted(pid for pid in pids if pid_alive(pid))

    # --------------------------------------------------------------- SuperNodes

    def start_supernode(
        self, partition_id: int, num_partitions: int
    ) -> subprocess.Popen:
        """Start a deployment SuperNode with its partition in the node config."""
        if self.simulation:
            raise RuntimeError(
                "SuperNodes join a deployment SuperLink only "
                "(LocalSuperLink(simulation=False))."
            )
        cmd = [
            _bin("flower-supernode"),
            "--insecure",
            "--superlink",
            self.address,
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={partition_id} num-partitions={num_partitions}",
        ]
        proc = self._spawn(cmd, f"supernode-{partition_id}.log")
        self.processes.append(proc)
        self.supernodes[partition_id] = proc
        return proc

    def start_supernodes(self, num_supernodes: int) -> list[subprocess.Popen]:
        """Start SuperNodes for partitions ``0..num_supernodes-1``."""
        return [self.start_supernode(i, num_supernodes) for i in range(num_supernodes)]

    def online_supernodes(self) -> int:
        """Count the SuperNodes the SuperLink reports as online."""
        result = subprocess.run(
            [_bin("flwr"), "supernode", "list", "local", "--format", "json"],
            cwd=self.workdir,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,
        )
        try:
            nodes = json.loads(result.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for node in nodes if node.get("status") == "online")

    def wait_for_supernodes(self, count: int, timeout: float = 120.0) -> None:
        """Block until ``count`` SuperNodes are online (so round 1 samples them all).

        Raises
        ------
        RuntimeError
            If one of the SuperNodes started here exits first.
        TimeoutError
            If fewer than ``count`` are online after ``timeout`` seconds.

        """
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            for pid_, proc in self.supernodes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"SuperNode {pid_} exited with code {proc.returncode}; "
                        f"see {self.log_dir}/supernode-{pid_}.log"
                    )
            online = self.online_supernodes()
            if online >= count:
                return
            time.sleep(1.0)
        raise TimeoutError(
            f"Only {online} of {count} SuperNodes online after {timeout:.0f}s; "
            f"see the logs in {self.log_dir}."
        )

    def kill_supernode(self, partition_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the SuperNode of ``partition_id`` and its process group.

        ``SIGKILL`` simulates a crash: the SuperLink notices only when the
        node's heartbeats stop (about a minute in flwr 1.42). ``SIGTERM`` is a
        graceful leave: the node deactivates itself at once.
        """
        proc = self.supernodes[partition_id]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=30)

    # ---------------------------------------------------------------------- run

    def env(self) -> dict[str, str]:
        """Environment for the ``flwr`` CLI and every Flower process started here."""
        return flower_env(self.home, self.http_port, self.http_port, self.tag)

    def launch_app(
        self,
        run_config: Mapping[str, Any],
        *,
        num_supernodes: int = 10,
        app_dir: Path = REPO_ROOT,
        client_cpus: int = 1,
        stdout: IO[str] | int | None = None,
    ) -> subprocess.Popen:
        """Start ``flwr run --stream`` without waiting; it exits when the run ends.

        ``num_supernodes`` and ``client_cpus`` apply to simulation only; in
        deployment mode the federation is whatever SuperNodes are connected.
        ``stdout`` takes the run's log stream (a file, ``subprocess.PIPE``, or
        ``None`` for this process's stdout).
        """
        cmd = [_bin("flwr"), "run", str(app_dir), "local", "--stream"]
        cmd += config_args("--run-config", run_config)
        if self.simulation:
            cmd += config_args(
                "--federation-config",
                {
                    "num-supernodes": num_supernodes,
                    "client-resources-num-cpus": client_cpus,
                },
            )
        proc = subprocess.Popen(
            cmd,
            cwd=self.workdir,
            env=self.env(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def run_app(
        self,
        run_config: Mapping[str, Any],
        *,
        num_supernodes: int = 10,
        app_dir: Path = REPO_ROOT,
        client_cpus: int = 1,
        timeout: float | None = None,
        stdout: IO[str] | None = None,
    ) -> int:
        """Run the app with ``flwr run --stream``; return 0 only if it completed.

        ``flwr run`` exits non-zero on CLI errors only; whether the run
        completed is read from its ``run.json`` (:func:`run_json_path`, waiting
        up to :data:`STATUS_SETTLE_S` for the final record). Unless it
        completed, the status, reason and log locations go to stderr.

        ``stdout`` receives the run's log stream; by default it is shown on
        this process's stdout and kept in ``<log_dir>/flwr-run.log``.

        Raises
        ------
        subprocess.TimeoutExpired
            If the run takes longer than ``timeout`` seconds (``flwr run`` is
            stopped first).

        """
        launched = datetime.now(UTC)
        with contextlib.ExitStack() as stack:
            if stdout is None:
                assert self.log_dir is not None
                log_path: Path | None = self.log_dir / "flwr-run.log"
                log = stack.enter_context(log_path.open("w", encoding="utf-8"))
                sink: IO[str] | int = subprocess.PIPE
            else:
                log_path = Path(stdout.name) if hasattr(stdout, "name") else None
                sink = stdout
            proc = self.launch_app(
                run_config,
                num_supernodes=num_supernodes,
                app_dir=app_dir,
                client_cpus=client_cpus,
                stdout=sink,
            )
            pump = _tee(proc.stdout, (sys.stdout, log)) if stdout is None else None
            try:
                rc = proc.wait(timeout=timeout)
            finally:
                stop_process(proc)
                if pump is not None:
                    pump.join(timeout=10)
                with contextlib.suppress(ValueError):
                    self.processes.remove(proc)
        status = wait_for_final_status(
            run_json_path(run_config, self.workdir),
            STATUS_SETTLE_S,
            started_after=launched,
        )
        return self._verdict(rc, status, log_path)

    # ------------------------------------------------------------------ helpers

    def _verdict(self, rc: int, status: RunStatus, log_path: Path | None) -> int:
        if status.completed and rc == 0:
            return 0
        logs = [str(log_path)] if log_path is not None else []
        logs.append(f"{self.log_dir}/superlink.log")
        flwr = "" if rc == 0 else f"flwr run exited with code {rc}; "
        print(
            f"error: {flwr}{status.describe()}; logs: {', '.join(logs)}",
            file=sys.stderr,
            flush=True,
        )
        return rc or 1

    def _spawn(self, cmd: Sequence[str], log_name: str) -> subprocess.Popen:
        assert self.log_dir is not None
        handle = self._logs.enter_context((self.log_dir / log_name).open("wb"))
        return subprocess.Popen(
            list(cmd),
            cwd=self.workdir,
            env=self.env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _write_flower_config(self) -> None:
        """Write a private ``config.toml`` whose ``local`` is this SuperLink."""
        address = ":local:" if self.simulation else self.address
        text = (
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "{address}"\n'
        )
        if not self.simulation:
            text += "insecure = true\n"
        (self.home / "config.toml").write_text(text, encoding="utf-8")


def _tee(source: IO[str] | None, sinks: Sequence[IO[str]]) -> threading.Thread:
    """Copy ``source`` line by line to every sink, in a daemon thread."""

    def pump() -> None:
        assert source is not None
        for line in source:
            for sink in sinks:
                with contextlib.suppress(ValueError, OSError):
                    sink.write(line)
                    sink.flush()

    thread = threading.Thread(target=pump, name="flwr-run-log", daemon=True)
    thread.start()
    return thread


def run_deployment(
    run_config: Mapping[str, Any],
    num_supernodes: int,
    *,
    workdir: Path = REPO_ROOT,
    log_dir: Path | None = None,
    timeout: float | None = None,
    connect_timeout: float = 180.0,
    stdout: IO[str] | None = None,
) -> int:
    """Run the app on a local deployment: 1 SuperLink + ``num_supernodes`` SuperNodes.

    ``num-clients`` must equal ``num_supernodes`` (it is set when missing). All
    SuperNodes are online before the run is submitted, and every process is
    stopped afterwards, also on errors and interrupts.

    Returns
    -------
    int
        0 when the run completed (see :meth:`LocalSuperLink.run_app`).

    """
    config = dict(run_config)
    num_clients = int(config.setdefault("num-clients", num_supernodes))
    if num_clients != num_supernodes:
        raise SystemExit(
            f"num-clients={num_clients} but {num_supernodes} SuperNodes: each "
            "SuperNode holds one partition, so they must match."
        )
    with LocalSuperLink(simulation=False, workdir=workdir, log_dir=log_dir) as link:
        print(
            f"[deploy] SuperLink on {link.address}; logs in {link.log_dir}",
            file=sys.stderr,
            flush=True,
        )
        link.start_supernodes(num_supernodes)
        link.wait_for_supernodes(num_supernodes, timeout=connect_timeout)
        print(
            f"[deploy] {num_supernodes} SuperNodes online; submitting the run",
            file=sys.stderr,
            flush=True,
        )
        return link.run_app(config, timeout=timeout, stdout=stdout)


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks stop children.

    SIGINT (Ctrl-C) already raises ``KeyboardInterrupt``.
    """
    signums = (signal.SIGTERM, signal.SIGHUP)
    previous = {
        signum: signal.signal(signum, lambda num, _frame: sys.exit(128 + num))
        for signum in signums
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config override key=value, read like `flwr run -c` "
        "(repeatable; bare words are strings)",
    )
    parser.add_argument(
        "--num-supernodes",
        type=int,
        default=None,
        help="simulated SuperNodes (default: num-clients)",
    )
    parser.add_argument(
        "--deployment",
        type=int,
        default=None,
        metavar="N",
        help="deployment engine instead of simulation: start N "
        "real SuperNodes on 127.0.0.1 (num-clients=N)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="output-dir unless a -c output-dir=... is given (any characters, "
        "no TOML quoting needed)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where SuperLink/SuperNode logs go (default: a tmp dir)",
    )
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    return parser


def run_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run config of the CLI: ``-c`` values, then ``--output-dir`` if unset.

    Raises
    ------
    RunConfigArgError
        For a ``-c`` argument that cannot be read.
    """
    run_config = parse_assignments(args.run_config)
    if args.output_dir is not None:
        run_config.setdefault("output-dir", str(args.output_dir))
    return run_config


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the app once on a private simulation or deployment SuperLink."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_supernodes", "deployment", "client_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.timeout is not None and not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:  # fail at once, before any process starts or any training runs
        run_config = run_config_from_args(args)
        cfg = parse_run_config(
            {**run_config, "num-clients": args.deployment}
            if args.deployment is not None
            else run_config
        )
        num_nodes = args.deployment or args.num_supernodes or cfg.num_clients or 10
        check_federation(cfg, num_nodes)
        check_output_dir(cfg.resolved_output_dir(REPO_ROOT), cfg.overwrite)
        check_data_inputs(cfg)
    except (
        RunConfigArgError,
        ConfigError,
        OutputDirInUseError,
        DataUnavailableError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with interrupt_as_exit():
        try:
            if args.deployment is not None:
                return run_deployment(
                    run_config,
                    args.deployment,
                    log_dir=args.log_dir,
                    timeout=args.timeout,
                )
            with LocalSuperLink(simulation=True, log_dir=args.log_dir) as link:
                return link.run_app(
                    run_config,
                    num_supernodes=num_nodes,
                    client_cpus=args.client_cpus,
                    timeout=args.timeout,
                )
        except subprocess.TimeoutExpired:
            print(
                f"error: the run did not finish within --timeout {args.timeout:g}s; "
                "every process it started was stopped",
                file=sys.stderr,
            )
            return 124


if __name__ == "__main__":
    raise SystemExit(main())
