"""Run the app on a private local SuperLink: free ports, own FLWR_HOME, stopped by PID.

``flwr run`` alone starts a detached SuperLink on fixed ports that outlives the
run and, unless told otherwise, ``uv sync``s the app's dependencies into a fresh
venv. :class:`LocalSuperLink` avoids both: it starts ``flower-superlink`` itself
(simulation or deployment mode) on free loopback ports with runtime dependency
installation disabled, points the ``flwr`` CLI at it through environment
variables and a private ``FLWR_HOME``, and stops every process it started - by
PID and process group, also on errors and interrupts.

Command line (used by ``run.sh`` and the experiment scripts)::

    python -m tracefl.flower_local --num-supernodes 10 -c num-server-rounds=3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
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


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and its process group (started with a new session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


@dataclass
class LocalSuperLink:
    """A SuperLink on free 127.0.0.1 ports, owned (and stopped) by this object.

    Parameters
    ----------
    simulation
        ``True`` runs Flower's simulation runtime inside the SuperLink;
        ``False`` starts a deployment SuperLink that real SuperNodes join.
    workdir
        Working directory of the SuperLink (and so of the ServerApp): relative
        ``output-dir`` values resolve against it.
    """

    simulation: bool = True
    workdir: Path = REPO_ROOT
    log_dir: Path | None = None
    home: Path = field(init=False)
    http_port: int = field(init=False)
    control_port: int = field(init=False)
    fleet_port: int = field(init=False)
    processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    _logs: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, init=False)

    def __enter__(self) -> LocalSuperLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 60.0) -> None:
        """Start ``flower-superlink`` and wait until its HTTP API answers."""
        self.home = Path(tempfile.mkdtemp(prefix="tracefl-flwr-home-"))
        self.log_dir = Path(self.log_dir or tempfile.mkdtemp(prefix="tracefl-flwr-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.control_port, self.fleet_port = (
            free_port(),
            free_port(),
            free_port(),
        )
        cmd = [
            _bin("flower-superlink"),
            "--insecure",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--control-api-address",
            f"127.0.0.1:{self.control_port}",
            "--fleet-api-address",
            f"127.0.0.1:{self.fleet_port}",
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

    def stop(self) -> None:
        """Stop every process this object started (SuperNodes first), by PID."""
        for proc in reversed(self.processes):
            stop_process(proc)
        self.processes.clear()
        self._logs.close()
        if getattr(self, "home", None) is not None:
            shutil.rmtree(self.home, ignore_errors=True)

    def start_supernode(self, partition_id: int, num_partitions: int) -> subprocess.Popen:
        """Start a deployment SuperNode with its partition in the node config."""
        cmd = [
            _bin("flower-supernode"),
            "--insecure",
            "--superlink",
            f"127.0.0.1:{self.fleet_port}",
            "--isolation",
            "subprocess",
            "--port",
            str(free_port()),
            "--node-config",
            f"partition-id={partition_id} num-partitions={num_partitions}",
        ]
        proc = self._spawn(cmd, f"supernode-{partition_id}.log")
        self.processes.append(proc)
        return proc

    # ---------------------------------------------------------------------- run

    def env(self) -> dict[str, str]:
        """Environment for the ``flwr`` CLI and every Flower process started here."""
        env = dict(os.environ)
        env.update(
            {
                "FLWR_HOME": str(self.home),
                "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
                "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1",
                # SuperLink spawns flower-superexec/flwr-serverapp by name.
                "PATH": os.pathsep.join(
                    [str(Path(sys.executable).parent), env.get("PATH", "")]
                ),
            }
        )
        return env

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
        """Run the app with ``flwr run --stream`` and return its exit code."""
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
        try:
            return proc.wait(timeout=timeout)
        finally:
            stop_process(proc)

    # ------------------------------------------------------------------ helpers

    def _spawn(self, cmd: Sequence[str], log_name: str) -> subprocess.Popen:
        assert self.log_dir is not None
        handle = self._logs.enter_context(open(self.log_dir / log_name, "wb"))
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
        """A private ``config.toml``: ``local`` points at this SuperLink."""
        address = ":local:" if self.simulation else f"127.0.0.1:{self.control_port}"
        text = (
            '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "{address}"\n'
        )
        if not self.simulation:
            text += "insecure = true\n"
        (self.home / "config.toml").write_text(text, encoding="utf-8")


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop child processes."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    """CLI: run the app once on a private simulation SuperLink."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--run-config", action="append", default=[],
                        help="run-config override key=value (repeatable)")
    parser.add_argument("--num-supernodes", type=int, default=None,
                        help="simulated SuperNodes (default: num-clients)")
    parser.add_argument("--client-cpus", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    args = parser.parse_args(argv)
    run_config = parse_assignments(args.run_config)
    num_nodes = args.num_supernodes or int(run_config.get("num-clients", 10))
    with interrupt_as_exit(), LocalSuperLink(simulation=True) as link:
        return link.run_app(
            run_config,
            num_supernodes=num_nodes,
            client_cpus=args.client_cpus,
            timeout=args.timeout,
        )


if __name__ == "__main__":
    raise SystemExit(main())
