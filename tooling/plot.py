"""Rebuild every figure and summary table from existing CSVs (no training).

python -m tooling.plot                 # every experiment under results/
python -m tooling.plot results/default # one run directory
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from tooling.experiments import EXPERIMENTS, summarize
from tooling.flower_local import REPO_ROOT as REPO
from tracefl.plotting import plot_run
from tracefl.report import SETTING_COLUMNS, SUMMARY_COLUMNS, markdown_table

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
        name = path.name.removesuffix("-paper")
        if name in EXPERIMENTS:
            summarize(EXPERIMENTS[name], path, copy_static=path.name == name)
            if args.markdown:
                frame = pd.read_csv(path / "summary.csv")
                print(f"\n### {name}\n")
                print(markdown_table(frame, MARKDOWN_COLUMNS))
        elif (path / "rounds.csv").is_file():
            print("\n".join(str(p) for p in plot_run(path)))
        else:
            print(f"skipping {path}: neither an experiment nor a run", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
