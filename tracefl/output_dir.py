"""A run's output directory: what a run writes there, and a clean start.

:func:`prepare_output_dir` runs before any training: a folder that holds
another run's results is refused (or, with ``overwrite``, emptied of them), so
results of two runs never mix and no stale figure survives a rerun. Files a
run does not write are never touched.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tracefl.results_io import read_json

#: Files (and patterns) a run writes into its output directory.
RESULT_FILES = (
    "run.json",
    "rounds.csv",
    "inputs.csv",
    "clients.csv",
    "methods.csv",
    "scores.csv",
)
RESULT_PATTERNS = (
    re.compile(r"accuracy\.(png|pdf)"),
    re.compile(r"provenance_round_\d+\.(png|pdf)"),
    re.compile(r"\..+\.tmp"),
)
#: Where the cumulative fused updates ``U_k`` of a run are kept.
CUMULATIVE_DIR = "cumulative"
RESULT_DIRS = ("models", CUMULATIVE_DIR)


class OutputDirInUseError(RuntimeError):
    """The output directory holds another run's results (and overwrite is off)."""


def result_paths(out_dir: Path) -> list[Path]:
    """Every file or folder in ``out_dir`` that a TraceFL run writes."""
    if not out_dir.is_dir():
        return []
    found = []
    for path in sorted(out_dir.iterdir()):
        name = path.name
        if (
            (path.is_file() and name in RESULT_FILES)
            or (path.is_file() and any(p.fullmatch(name) for p in RESULT_PATTERNS))
            or (path.is_dir() and name in RESULT_DIRS)
        ):
            found.append(path)
    return found


def check_output_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """The result files a run in ``out_dir`` would replace; refuse if not allowed.

    Raises
    ------
    OutputDirInUseError
        ``out_dir`` holds results of another run and ``overwrite`` is off.

    """
    existing = result_paths(out_dir)
    if existing and not overwrite:
        previous = read_json(out_dir / "run.json") or {}
        raise OutputDirInUseError(
            f"output-dir '{out_dir}' already holds the results of another run "
            f"(status {previous.get('status', 'unknown')!r}, started "
            f"{previous.get('started', 'unknown')}; {len(existing)} result files). "
            "Set overwrite=true to replace them, or choose another output-dir or "
            "run-name."
        )
    return existing


def prepare_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Make ``out_dir`` ready for a new run, before anything is trained.

    Removes the results of an earlier run when ``overwrite`` is set (files a
    run does not write are kept); see :func:`check_output_dir`.
    """
    for path in check_output_dir(out_dir, overwrite):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
