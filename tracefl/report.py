"""Experiment summaries: one row per run, as CSV, LaTeX and figures.

An *experiment* directory holds one sub-directory per run (each with
``rounds.csv`` and ``run.json``, as written by the ServerApp). Everything here
reads those files only, so summaries and figures can be rebuilt at any time
without re-running training (``scripts/plot.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tracefl.plotting import numeric_column, save_figure
from tracefl.results_io import write_csv, write_text

SUMMARY_COLUMNS = (
    "run",
    "dataset",
    "model",
    "num_clients",
    "clients_per_round",
    "alpha",
    "rounds",
    "noise_multiplier",
    "clipping_norm",
    "faulty_clients",
    "max_test_accuracy",
    "final_test_accuracy",
    "traced_rounds",
    "inputs_traced",
    "paper_accuracy",
    "paper_min_after_round1",
    "paper_random_baseline",
    "strict_accuracy",
    "strict_random_baseline",
    "strict_top3",
    "faulty_accuracy",
    "faulty_min",
    "faulty_random_baseline",
    "rounds_without_faulty_inputs",
    "feddebug_accuracy",
    "tracefl_seconds_per_round",
    "tracefl_seconds_per_input",
    "feddebug_seconds_per_round",
    "provenance_share",
)


#: Columns that identify a run's setting (also the summary's sort order).
SETTING_COLUMNS = (
    "dataset",
    "model",
    "num_clients",
    "alpha",
    "noise_multiplier",
    "clipping_norm",
)
#: The accuracy columns worth showing in a compact table, with their baselines.
ACCURACY_COLUMNS = (
    "max_test_accuracy",
    "paper_accuracy",
    "paper_random_baseline",
    "strict_accuracy",
    "strict_random_baseline",
    "faulty_accuracy",
    "faulty_random_baseline",
    "feddebug_accuracy",
)


def _mean(frame: pd.DataFrame, column: str) -> float:
    values = numeric_column(frame, column)
    return float(values.mean()) if values.notna().any() else float("nan")


def summarize_run(run_dir: Path) -> dict[str, object]:
    """Summary row of one run (means over the rounds that were traced)."""
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    rounds = pd.read_csv(run_dir / "rounds.csv")
    traced = rounds[rounds["status"] == "traced"]
    after_first = traced[traced["round"] > 1]
    paper_after = numeric_column(after_first, "paper_accuracy")
    faulty = numeric_column(traced, "faulty_accuracy")
    return {
        "run": run_dir.name,
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "num_clients": cfg["num-clients"],
        "clients_per_round": float(rounds["num_participants"].mean()),
        "alpha": cfg["dirichlet-alpha"],
        "rounds": len(rounds),
        "noise_multiplier": cfg["noise-multiplier"],
        "clipping_norm": cfg["clipping-norm"],
        "faulty_clients": cfg["faulty-clients"],
        "max_test_accuracy": float(rounds["test_accuracy"].max()),
        "final_test_accuracy": float(rounds["test_accuracy"].iloc[-1]),
        "traced_rounds": len(traced),
        "inputs_traced": int(traced["num_traced"].sum()),
        "paper_accuracy": _mean(traced, "paper_accuracy"),
        "paper_min_after_round1": (
            float(paper_after.min()) if paper_after.notna().any() else float("nan")
        ),
        "paper_random_baseline": _mean(traced, "paper_random_baseline"),
        "strict_accuracy": _mean(traced, "strict_accuracy"),
        "strict_random_baseline": _mean(traced, "strict_random_baseline"),
        "strict_top3": _mean(traced, "strict_top3"),
        "faulty_accuracy": _mean(traced, "faulty_accuracy"),
        "faulty_min": float(faulty.min()) if faulty.notna().any() else float("nan"),
        "faulty_random_baseline": _mean(traced, "faulty_random_baseline"),
        "rounds_without_faulty_inputs": int(
            (rounds["status"] == "no-eligible-inputs").sum()
        )
        if cfg["faulty-clients"]
        else float("nan"),
        "feddebug_accuracy": _mean(traced, "feddebug_accuracy"),
        "tracefl_seconds_per_round": _mean(traced, "provenance_seconds"),
        "tracefl_seconds_per_input": _mean(traced, "provenance_seconds_per_input"),
        "feddebug_seconds_per_round": _mean(traced, "feddebug_seconds"),
        "provenance_share": _mean(traced, "provenance_share"),
    }


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


def summarize_experiment(experiment_dir: Path) -> pd.DataFrame:
    """Summary table of every run, written as ``summary.csv`` and ``summary.tex``."""
    experiment_dir = Path(experiment_dir)
    rows = [summarize_run(d) for d in run_dirs(experiment_dir)]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    order = [*SETTING_COLUMNS, "run"]
    frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    write_csv(experiment_dir / "summary.csv", frame.to_dict("records"), SUMMARY_COLUMNS)
    write_text(experiment_dir / "summary.tex", latex_table(frame))
    return frame


def latex_table(frame: pd.DataFrame) -> str:
    """A compact LaTeX table (percentages) of the informative columns."""
    columns = [
        c
        for c in (*SETTING_COLUMNS, *ACCURACY_COLUMNS)
        if c in frame and frame[c].notna().any()
    ]
    shown = frame[columns].copy()
    for c in columns:
        if c.endswith(("accuracy", "baseline")):
            shown[c] = (100 * numeric_column(shown, c)).round(1)
    header = " & ".join(c.replace("_", " ") for c in columns)
    lines = [
        "\\begin{tabular}{" + "l" * len(columns) + "}",
        "\\hline",
        header + " \\\\",
        "\\hline",
    ]
    for _, row in shown.iterrows():
        cells = ["--" if pd.isna(v) else str(v) for v in row.tolist()]
        lines.append(" & ".join(c.replace("_", "\\_") for c in cells) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(lines)


def plot_bars(
    frame: pd.DataFrame, label_column: str, stem: Path, title: str
) -> list[Path]:
    """Grouped bars per run: global accuracy, TraceFL paper/strict, random."""
    metrics = [
        ("max_test_accuracy", "Global model (max)"),
        ("paper_accuracy", "TraceFL (paper metric)"),
        ("paper_random_baseline", "Random (paper metric)"),
        ("strict_accuracy", "TraceFL (strict metric)"),
        ("strict_random_baseline", "Random (strict metric)"),
    ]
    labels = frame[label_column].astype(str).tolist()
    x = np.arange(len(labels))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels) + 2), 3.6))
    for i, (column, name) in enumerate(metrics):
        values = 100 * numeric_column(frame, column).fillna(0)
        ax.bar(x + (i - len(metrics) / 2 + 0.5) * width, values, width, label=name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, stem)


def plot_lines(
    frame: pd.DataFrame, x_column: str, stem: Path, title: str, xlabel: str
) -> list[Path]:
    """Accuracy metrics against a swept parameter (e.g. Dirichlet alpha)."""
    frame = frame.sort_values(x_column)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = frame[x_column]
    for column, name, style in (
        ("max_test_accuracy", "Global model (max over rounds)", "k-o"),
        ("paper_accuracy", "TraceFL (paper metric)", "C0-s"),
        ("strict_accuracy", "TraceFL (strict metric)", "C1-^"),
        ("paper_random_baseline", "Random (paper metric)", "C0:"),
        ("strict_random_baseline", "Random (strict metric)", "C1:"),
    ):
        ax.plot(x, 100 * numeric_column(frame, column), style, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, stem)


def plot_round_curves(
    experiment_dir: Path,
    column: str,
    label_column: str,
    stem: Path,
    title: str,
    ylabel: str,
) -> list[Path]:
    """One line per run of a per-round column (e.g. test accuracy per DP level)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for run_dir in run_dirs(experiment_dir):
        rounds = pd.read_csv(run_dir / "rounds.csv")
        cfg = json.loads((run_dir / "run.json").read_text())["config"]
        ax.plot(
            rounds["round"],
            100 * numeric_column(rounds, column),
            "-o",
            label=f"{label_column}={cfg[label_column]}",
        )
    ax.set_xlabel("Round")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, stem)


def plot_times(
    frame: pd.DataFrame, label_column: str, stem: Path, title: str
) -> list[Path]:
    """TraceFL vs FedDebug localization time per round (paper Fig. 6)."""
    labels = frame[label_column].astype(str).tolist()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(labels) + 2), 3.4))
    ax.bar(x - 0.2, frame["tracefl_seconds_per_round"], 0.4, label="TraceFL")
    ax.bar(
        x + 0.2,
        numeric_column(frame, "feddebug_seconds_per_round").fillna(0),
        0.4,
        label="FedDebug",
    )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("Localization time per round (s)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, stem)


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    """Markdown table of ``columns``; accuracies and baselines shown in percent."""
    shown = [c for c in columns if c in frame and frame[c].notna().any()]
    lines = [
        "| " + " | ".join(c.replace("_", " ") for c in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    for _, row in frame[shown].iterrows():
        cells = []
        for column in shown:
            value = row[column]
            if pd.isna(value):
                cells.append("–")
            elif column.endswith(("accuracy", "baseline", "top3", "min", "round1")):
                cells.append(f"{100 * float(value):.1f}")
            elif isinstance(value, float):
                cells.append(f"{value:.3g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
