"""Run the app on a private local SuperLink: free ports, own FLWR_HOME, stopped by PID.

``flwr run`` alone starts a detached SuperLink on fixed ports that outlives the
run and, unless told otherwise, ``uv sync``s the app's dependencies into a fresh
venv. :class:`LocalSuperLink` avoids both: it starts ``flower-superlink`` itself
(simulation or deployment mode) on a free loopback port with runtime dependency
installation disabled, points the ``flwr`` CLI at it through a private
``FLWR_HOME``, and stops every process it started - by PID and process group,
also on errors and interrupts.

In flwr 1.41 one HTTP port (``--host``/``--port``) serves the SuperLink's
Runtime, Control *and* Fleet APIs: ``flwr`` (Control) and ``flower-supernode
--superlink`` (Fleet) both talk to it.

Deployment mode (``simulation=False``) starts real ``flower-supernode``
processes, each with its own ``partition-id``/``num-partitions`` node config and
a free port for its ClientApp runtime API. Flower detaches some helpers
(``flower-superexec``) into their own sessions, so every process started here
carries a private tag in its environment; :meth:`LocalSuperLink.stop` also
stops any tagged process that escaped the process groups, by PID.

Command line (used by ``run.sh``, ``deploy_local.sh`` and the experiment
scripts)::

    python -m tooling.flower_local --num-supernodes 10 -c num-server-rounds=3
    python -m tooling.flower_local --deployment 3 -c num-server-rounds=2
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
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tracefl.config import ConfigError, parse_run_config

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Environment variable that marks every process started by one LocalSuperLink.
TAG_ENV = "TRACEFL_LOCAL_SUPERLINK_TAG"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """Render a Python value as a TOML literal for ``--run-config``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"


def config_args(flag: str, values: Mapping[str, Any]) -> list[str]:
    """``--run-config k=v`` arguments, one flag per key (values may hold spaces)."""
    args: list[str] = []
    for key, value in values.items():
        args += [flag, f"{key}={toml_value(value)}"]
    return args


def _bin(name: str) -> str:
    """Path of a console script of the running interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        # Field 3, after the parenthesised command name, is the state.
        return stat.read_text().rpartition(")")[2].split()[0] != "Z"
    return True


def tagged_pids(tag: str) -> list[int]:
    """PIDs of live processes whose environment holds ``TAG_ENV=tag`` (Linux).

    Returns an empty list where ``/proc`` is unavailable.
    """
    marker = f"{TAG_ENV}={tag}".encode()
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


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
        Where ``superlink.log`` and ``supernode-<i>.log`` go (a temporary
        directory when ``None``).

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
        node's heartbeats stop (about a minute in flwr 1.41). ``SIGTERM`` is a
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
        env = dict(os.environ)
        env.update(
            {
                "FLWR_HOME": str(self.home),
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
                "FLWR_LOCAL_CONTROL_API_PORT": str(self.http_port),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1",
                TAG_ENV: self.tag,
                # SuperLink spawns flower-superexec/flwr-serverapp by name.
                "PATH": os.pathsep.join(
                    [str(Path(sys.executable).parent), env.get("PATH", "")]
                ),
            }
        )
        return env

    def launch_app(
        self,
        run_config: Mapping[str, Any],
        *,
        num_supernodes: int = 10,
        app_dir: Path = REPO_ROOT,
        client_cpus: int = 1,
        stdout: IO[str] | None = None,
    ) -> subprocess.Popen:
        """Start ``flwr run --stream`` without waiting; it exits when the run ends.

        ``num_supernodes`` and ``client_cpus`` apply to simulation only; in
        deployment mode the federation is whatever SuperNodes are connected.
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
            stdout=stdout if stdout is not None else None,
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

        The exit code of ``flwr run`` is non-zero on CLI errors only; a run whose
        ServerApp raised is caught through its ``run.json`` status
        (:func:`run_status_code`).

        Raises
        ------
        subprocess.TimeoutExpired
            If the run takes longer than ``timeout`` seconds (``flwr run`` is
            stopped first).

        """
        proc = self.launch_app(
            run_config,
            num_supernodes=num_supernodes,
            app_dir=app_dir,
            client_cpus=client_cpus,
            stdout=stdout,
        )
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            stop_process(proc)
            with contextlib.suppress(ValueError):
                self.processes.remove(proc)
        return rc or run_status_code(run_config, self.workdir)

    # ------------------------------------------------------------------ helpers

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


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings with TOML value syntax (bare words are strings)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"Expected key=value, got {item!r}.")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the app once on a private simulation or deployment SuperLink."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        help="run-config override key=value (repeatable)",
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
        "--log-dir",
        type=Path,
        default=None,
        help="where SuperLink/SuperNode logs go (default: a tmp dir)",
    )
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    run_config = parse_assignments(args.run_config)
    try:  # fail at once, before any process starts or any training runs
        parse_run_config(
            {**run_config, "num-clients": args.deployment}
            if args.deployment is not None
            else run_config
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with interrupt_as_exit():
        if args.deployment is not None:
            if args.deployment < 1:
                parser.error("--deployment needs at least one SuperNode")
            return run_deployment(
                run_config, args.deployment, log_dir=args.log_dir, timeout=args.timeout
            )
        num_nodes = args.num_supernodes or int(run_config.get("num-clients", 10))
        with LocalSuperLink(simulation=True, log_dir=args.log_dir) as link:
            return link.run_app(
                run_config,
                num_supernodes=num_nodes,
                client_cpus=args.client_cpus,
                timeout=args.timeout,
            )


def run_status_code(run_config: Mapping[str, Any], workdir: Path = REPO_ROOT) -> int:
    """0 if the run's ``run.json`` says it completed, else 1.

    ``flwr run --stream`` exits 0 even when the ServerApp raised, so the
    ServerApp's own record is the reliable verdict. ``workdir`` is the
    SuperLink's working directory, against which relative paths resolve.
    """
    try:
        out_dir = parse_run_config(run_config).resolved_output_dir(workdir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    run_json = out_dir / "run.json"
    try:
        status = json.loads(run_json.read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status != "completed":
        print(
            f"error: run did not complete (status {status!r} in {run_json})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
