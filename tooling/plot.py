"""Rebuild every figure and summary table from existing CSVs (no training).

python -m tooling.plot                 # every experiment and run under results/
python -m tooling.plot results/default # one run directory
python -m tooling.plot --markdown      # also print each summary as Markdown

Experiment figures quoted in the README are copied to ``_static/`` (reduced
scale only), as the experiment scripts do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from tooling.experiments import summarize
from tooling.flower_local import REPO_ROOT as REPO
from tracefl.plotting import plot_run
from tracefl.report import (
    SETTING_COLUMNS,
    SUMMARY_COLUMNS,
    is_experiment_dir,
    is_run_dir,
)
from tracefl.report_tables import markdown_table

#: Everything but the setting columns (the run name already says them).
MARKDOWN_COLUMNS = [
    c
    for c in SUMMARY_COLUMNS
    if c not in (*SETTING_COLUMNS, "clients_per_round", "rounds", "faulty_clients")
]


def main(argv: list[str] | None = None) -> int:
    """Rebuild figures of the given run or experiment directories."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="print each experiment's summary as a Markdown table (for the README)",
    )
    args = parser.parse_args(argv)
    targets = args.paths or sorted(
        p for p in (REPO / "results").iterdir() if p.is_dir()
    )
    for path in targets:
        path = path.resolve()
        if is_run_dir(path):
            print("\n".join(str(p) for p in plot_run(path)))
        elif is_experiment_dir(path):
            copy_static = not path.name.endswith("-paper")
            summarize(path.name, path, copy_static=copy_static, show=not args.markdown)
            if args.markdown:
                frame = pd.read_csv(path / "summary.csv")
                print(f"\n### {path.name}\n")
                print(markdown_table(frame, MARKDOWN_COLUMNS))
        else:
            print(f"skipping {path}: neither an experiment nor a run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
