"""Fault injection in real Flower processes: bad clients, full disk, killed launcher.

Three tools for the fault-injection tests:

- :func:`write_faulty_app` writes a temporary Flower app whose ServerApp is the
  real ``tracefl.server_app:app`` and whose ClientApp
  (:mod:`tooling.faulty_client_app`) wraps TraceFL's train function and
  misbehaves as told by :class:`ClientFault` values (raise, NaN/inf weights, a
  wrong shape or dtype, missing/extra arrays, bad ``num-examples`` or label
  counts, sleeping past ``round-timeout``). Run it with
  ``LocalSuperLink.run_app(..., app_dir=...)``.
- :func:`small_tmpfs_command` wraps a launcher command so that it runs in a
  private mount namespace with a small tmpfs (optionally pre-filled) mounted
  at the output folder: every write of the ServerApp there really gets
  ``ENOSPC``. The namespace dies with the command, so what it left is copied
  out first. ``unshare --mount`` as root, ``unshare --user --map-root-user
  --mount`` otherwise (util-linux).
- :func:`start_launcher` starts ``python -m tooling.flower_local`` as a real
  subprocess with a marker in its environment that every process below it
  inherits (:func:`marked_pids`), so a test can SIGKILL the launcher and check
  that nothing it started survives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w

from tooling.procfs import tagged_pids
from tooling.run_config_args import config_args

REPO_ROOT = Path(__file__).resolve().parent.parent

#: What each fault does (the reply is TraceFL's own unless it says otherwise).
FAULT_KINDS: dict[str, str] = {
    "raise": "raise RuntimeError before training (the reply is an error)",
    "sleep": "sleep `seconds`, then train and reply (late, e.g. past round-timeout)",
    "nan": "first float array all NaN",
    "inf": "first float array all +inf",
    "wrong-shape": "first float array one row longer (zeros)",
    "wrong-dtype": "first float array cast to int64",
    "missing-array": "first float array left out",
    "extra-array": "an extra array 'injected.extra'",
    "zero-examples": "num-examples = 0",
    "negative-label-counts": "label count of class 0 is -1",
    "label-counts-length": "one label count more than there are classes",
    "missing-attribution": "no 'attribution' ConfigRecord",
}

#: Environment variable :func:`start_launcher` sets; every descendant inherits it.
MARK_ENV = "TRACEFL_FAULT_TEST_MARK"


@dataclass(frozen=True)
class ClientFault:
    """One injected fault: ``kind`` on ``partitions`` in ``rounds``.

    ``None`` for partitions or rounds means all of them; ``seconds`` is the
    sleep of ``kind="sleep"``.
    """

    kind: str
    partitions: tuple[int, ...] | None = None
    rounds: tuple[int, ...] | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"Unknown fault kind {self.kind!r}; known: {', '.join(FAULT_KINDS)}."
            )
        if (self.kind == "sleep") != (self.seconds > 0):
            raise ValueError(
                f"seconds={self.seconds!r}: kind 'sleep' needs seconds > 0, "
                "other kinds take none."
            )


def write_faulty_app(app_dir: Path, faults: Sequence[ClientFault]) -> Path:
    """Write a Flower app: real TraceFL ServerApp, faulty ClientApp; return its dir.

    The app's ``[tool.flwr.app.config]`` is TraceFL's own (from the repository's
    ``pyproject.toml``), so every run-config key works as usual. Rewriting the
    faults of an existing app dir is fine: ``flwr run`` packages it anew.
    """
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))
    flwr = project["tool"]["flwr"]
    flwr["app"]["components"] = {
        "serverapp": "tracefl.server_app:app",
        "clientapp": "faulty_client_app:app",
    }
    pyproject = {
        "project": {
            "name": "tracefl-faults",
            "version": project["project"]["version"],
            "description": "TraceFL with a deliberately faulty ClientApp (tests)",
            "dependencies": project["project"]["dependencies"],
        },
        "tool": {"flwr": flwr},
    }
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject), "utf-8")
    shutil.copy2(Path(__file__).with_name("faulty_client_app.py"), app_dir)
    (app_dir / "faults.json").write_text(
        json.dumps({"faults": [asdict(f) for f in faults]}, indent=2), "utf-8"
    )
    return app_dir


def small_tmpfs_command(
    cmd: Sequence[str],
    mountpoint: Path,
    *,
    size_kib: int,
    fill_kib: int = 0,
    copy_out: Path,
) -> list[str]:
    """``cmd`` run with a ``size_kib`` tmpfs at ``mountpoint`` (private to it).

    ``fill_kib`` KiB of the tmpfs are taken by a ``.filler`` file first, so
    writes fail with ``ENOSPC`` once the rest is used. When ``cmd`` ends, the
    tmpfs content goes to ``copy_out`` (without the filler); the wrapper exits
    with ``cmd``'s exit code.
    """
    if not 0 <= fill_kib < size_kib:
        raise ValueError(f"fill_kib={fill_kib} must be in [0, size_kib={size_kib}).")
    mountpoint.mkdir(parents=True, exist_ok=True)
    copy_out.mkdir(parents=True, exist_ok=True)
    script = (
        'mount -t tmpfs -o "size=$2k" tmpfs "$1" || exit 97\n'
        'if [ "$3" -gt 0 ]; then\n'
        '  head -c "$(($3 * 1024))" /dev/zero > "$1/.filler"\n'
        "fi\n"
        "mnt=$1; out=$4; shift 4\n"
        '"$@"; rc=$?\n'
        'rm -f "$mnt/.filler"; cp -a "$mnt/." "$out/"\n'
        "exit $rc\n"
    )
    namespace = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        namespace[1:1] = ["--user", "--map-root-user"]
    return [
        *namespace,
        "sh",
        "-c",
        script,
        "tmpfs-wrapper",
        str(mountpoint),
        str(size_kib),
        str(fill_kib),
        str(copy_out),
        *cmd,
    ]


def launcher_command(
    run_config: Mapping[str, Any], *extra: str, num_supernodes: int | None = None
) -> list[str]:
    """``python -m tooling.flower_local`` with ``run_config`` as ``-c`` arguments."""
    cmd = [sys.executable, "-m", "tooling.flower_local"]
    if num_supernodes is not None:
        cmd += ["--num-supernodes", str(num_supernodes)]
    return [*cmd, *config_args("-c", run_config), *extra]


def start_launcher(
    cmd: Sequence[str], stdout: IO[str] | int | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a launcher ``cmd`` in the repository with a fresh :data:`MARK_ENV`.

    Returns the process (own session, so it alone can be signalled) and the
    mark its descendants carry.
    """
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(
        list(cmd),
        cwd=REPO_ROOT,
        env={**os.environ, MARK_ENV: mark},
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, mark


def marked_pids(mark: str) -> list[int]:
    """Live processes carrying ``MARK_ENV=mark`` (the launcher's whole tree)."""
    return tagged_pids(mark, env_name=MARK_ENV)
