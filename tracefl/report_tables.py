"""Cells and tables shared by every experiment report (CSV, Markdown).

Percentages with one decimal, settings without float noise, ``n/a`` where a
value does not apply to a run; :func:`run_dirs` finds an experiment's completed
runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracefl.plotting import format_value

#: Suffixes of the columns shown in percent.
PERCENT_SUFFIXES = ("accuracy", "baseline", "top3", "min", "round1")
#: Digits kept in ``summary.csv`` (means of values rounded to 6 decimals).
CSV_DECIMALS = 6
NOT_APPLICABLE = "n/a"


def run_dirs(experiment_dir: Path) -> list[Path]:
    """Run sub-directories whose ``run.json`` says the run completed."""
    found = []
    for path in sorted(Path(experiment_dir).iterdir()):
        run_json = path / "run.json"
        if (
            (path / "rounds.csv").is_file()
            and run_json.is_file()
            and json.loads(run_json.read_text()).get("status") == "completed"
        ):
            found.append(path)
    return found


def rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Floats rounded to :data:`CSV_DECIMALS` (no ``0.10000000000000002``)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(CSV_DECIMALS)
    return out


def format_cell(column: str, value: Any) -> str:
    """One table cell: percentages with one decimal, settings without float noise.

    Missing values (not applicable to the run, e.g. FedDebug on a text model)
    are ``n/a``.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return NOT_APPLICABLE
    if isinstance(value, str) and value.strip() in ("", NOT_APPLICABLE):
        return NOT_APPLICABLE
    if column.endswith(PERCENT_SUFFIXES) and not isinstance(value, bool):
        return f"{100 * float(value):.1f}"
    if column.endswith("_share") and not isinstance(value, bool):
        return f"{100 * float(value):.2f}"
    if column.endswith("seconds_per_round") or column.endswith("seconds_per_input"):
        return f"{float(value):.4f}"
    if isinstance(value, (float, np.floating)):
        return format_value(float(value))
    return format_value(value)


def shown_columns(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The ``columns`` present in ``frame`` with at least one value."""
    return [c for c in columns if c in frame and frame[c].notna().any()]


def markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """Markdown table of ``columns``; accuracies and baselines in percent."""
    shown = shown_columns(frame, columns)
    lines = [
        "| " + " | ".join(c.replace("_", " ") for c in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    for _, row in frame[shown].iterrows():
        lines.append("| " + " | ".join(format_cell(c, row[c]) for c in shown) + " |")
    return "\n".join(lines)
