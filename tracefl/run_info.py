"""A run's ``run.json``: configuration, versions, and a status that is always true.

The ServerApp writes it at start (``running``), may add facts while it runs,
and finishes it with ``completed``, ``failed`` (reason and last error) or
``interrupted``. A run refused before it started (bad run config) records that
too, where its output directory holds no other run's results.
"""

from __future__ import annotations

import os
import platform
import socket
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from tracefl.config import RUN_NAME_PATTERN
from tracefl.output_dir import result_paths
from tracefl.results_io import write_json

#: Packages whose versions determine a run's numbers.
VERSIONED_PACKAGES = (
    "tracefl",
    "flwr",
    "flwr-datasets",
    "torch",
    "torchvision",
    "transformers",
    "datasets",
    "numpy",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class RunInfo:
    """The writer of one run's ``run.json``."""

    def __init__(self, path: Path, payload: dict[str, Any]) -> None:
        self.path = path
        self.payload = payload

    @classmethod
    def start(cls, path: Path, payload: Mapping[str, Any]) -> RunInfo:
        """Write ``running`` with this process's pid and host."""
        info = cls(
            path,
            {
                **payload,
                "status": "running",
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )
        info.write()
        return info

    def update(self, **facts: Any) -> None:
        """Add facts learnt while running (rewrites the file)."""
        self.payload.update(facts)
        self.write()

    def finish(
        self,
        status: str,
        *,
        reason: str = "",
        error: BaseException | None = None,
        **facts: Any,
    ) -> None:
        """Write the final status (and the error's traceback tail, if any)."""
        self.payload.update(
            facts, status=status, finished=datetime.now(UTC).isoformat()
        )
        if reason:
            self.payload["reason"] = reason
        if error is not None:
            self.payload["error"] = repr(error)
            self.payload["traceback"] = traceback.format_exception(error)[-6:]
        self.write()

    def write(self) -> None:
        """Atomically rewrite ``run.json``."""
        write_json(self.path, self.payload)

    @staticmethod
    def record_refusal(
        run_config: Mapping[str, Any], started: str, err: BaseException
    ) -> None:
        """Record a run refused by its config, where that is safe to write.

        The output directory is guessed from the raw ``output-dir``/``run-name``
        values; nothing is written if it cannot be or if the folder holds
        another run's results.
        """
        out = run_config.get("output-dir")
        name = run_config.get("run-name", "default")
        if isinstance(out, str) and out:
            out_dir = Path(out).expanduser().resolve()
        elif isinstance(name, str) and RUN_NAME_PATTERN.fullmatch(name):
            out_dir = (Path("results") / name).resolve()
        else:
            return
        if result_paths(out_dir):
            return
        RunInfo(
            out_dir / "run.json",
            {"config": dict(run_config), "started": started},
        ).finish("failed", reason=f"invalid run config: {err}", error=err)
