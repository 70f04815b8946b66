"""Experiment summaries and figures: one row per run, as CSV, LaTeX, Markdown, PNG/PDF.

An *experiment* directory holds one sub-directory per run (each with
``rounds.csv`` and ``run.json``, as written by the ServerApp) and, when the
experiment runner made it, ``experiment.json`` naming its figure set.
Everything here reads those files only, so summaries and figures can be rebuilt
at any time without re-running training (``tracefl report <dir>``).

:data:`FIGURES` maps an experiment's figure set (``fig2``, ``fig3``, ``table1``,
...) to the function drawing its figures (the paper's here; the method
comparison, aggregator and adversarial sets in :mod:`tracefl.report_methods`,
:mod:`tracefl.report_aggregators` and :mod:`tracefl.report_adversarial`; shared
cells and tables in :mod:`tracefl.report_tables`); :func:`build_report` rebuilds
a run or an experiment directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from tracefl.plotting import (
    COLUMN_WIDTH,
    LINESTYLES,
    TEXT_WIDTH,
    figure_style,
    format_value,
    integer_rounds,
    legend_below,
    legend_right,
    mark_not_applicable,
    numeric_column,
    plot_run,
    read_run_config,
    save_figure,
)
from tracefl.report_adversarial import backdoor_figures, gaming_figures
from tracefl.report_aggregators import aggregators_figures
from tracefl.report_methods import methods_figures
from tracefl.report_tables import (
    NOT_APPLICABLE,
    format_cell,
    rounded,
    run_dirs,
    shown_columns,
)
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
    "client_weights_normalization",
    "enable_beta",
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
    "client_weights_normalization",
    "enable_beta",
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
    cfg = read_run_config(run_dir)
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
        "client_weights_normalization": cfg["client-weights-normalization"],
        "enable_beta": cfg["enable-beta"],
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


def summarize_experiment(experiment_dir: Path) -> pd.DataFrame:
    """Summary table of every run, written as ``summary.csv`` and ``summary.tex``."""
    experiment_dir = Path(experiment_dir)
    rows = [summarize_run(d) for d in run_dirs(experiment_dir)]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    order = [*SETTING_COLUMNS, "run"]
    frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    frame = rounded(frame)
    write_csv(experiment_dir / "summary.csv", frame.to_dict("records"), SUMMARY_COLUMNS)
    write_text(experiment_dir / "summary.tex", latex_table(frame))
    return frame


def latex_table(frame: pd.DataFrame) -> str:
    """A compact LaTeX table (accuracies in percent) of the informative columns.

    Dataset and model are always shown; other settings only where they vary.
    """
    varying = [
        c
        for c in SETTING_COLUMNS
        if c in ("dataset", "model") or (c in frame and frame[c].nunique() > 1)
    ]
    columns = shown_columns(frame, (*varying, *ACCURACY_COLUMNS))
    header = " & ".join(c.replace("_", " ") for c in columns)
    lines = [
        "\\begin{tabular}{" + "l" * len(columns) + "}",
        "\\hline",
        header + " \\\\",
        "\\hline",
    ]
    for _, row in frame[columns].iterrows():
        cells = [format_cell(c, row[c]) for c in columns]
        cells = ["--" if c == NOT_APPLICABLE else c for c in cells]
        lines.append(" & ".join(c.replace("_", "\\_") for c in cells) + " \\\\")
    lines += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------- bars

#: (column, legend label, colour, hatch) of the accuracy bars: TraceFL and its
#: random baseline share a hue (dark / light), so each pair reads together.
ACCURACY_BARS = (
    ("max_test_accuracy", "Global model (max over rounds)", "0.35", ""),
    ("paper_accuracy", "TraceFL, paper metric", "#1f77b4", ""),
    ("paper_random_baseline", "Random client, paper metric", "#aec7e8", "//"),
    ("strict_accuracy", "TraceFL, strict metric", "#ff7f0e", ""),
    ("strict_random_baseline", "Random client, strict metric", "#ffbb78", "//"),
)
FAULTY_BARS = (
    ("faulty_accuracy", "TraceFL", "#1f77b4", ""),
    ("feddebug_accuracy", "FedDebug", "#d62728", ""),
    ("faulty_random_baseline", "Random client", "#c7c7c7", "//"),
)


def grouped_bars(
    ax: plt.Axes,
    frame: pd.DataFrame,
    labels: Sequence[str],
    bars: Sequence[tuple[str, str, str, str]],
    *,
    scale: float = 100.0,
    annotate: bool = False,
    value_format: str = "{:.0f}",
) -> None:
    """Grouped bars, one group per row of ``frame``.

    A missing value (not applicable to that run) is drawn as an empty dashed
    outline marked ``n/a``; a true zero as a bar of height 0 with a ``0``
    label, so the two can never be confused.
    """
    x = np.arange(len(labels))
    width = 0.8 / len(bars)
    for i, (column, name, color, hatch) in enumerate(bars):
        values = scale * numeric_column(frame, column).to_numpy(dtype=float)
        pos = x + (i - len(bars) / 2 + 0.5) * width
        present = ~np.isnan(values)
        ax.bar(
            pos[present],
            values[present],
            width,
            label=name,
            color=color,
            hatch=hatch or None,
            edgecolor="white" if not hatch else "0.4",
            linewidth=0.4,
        )
        for p, v in zip(pos, values, strict=True):
            if np.isnan(v):
                mark_not_applicable(ax, p, NOT_APPLICABLE)
            elif annotate or v == 0:
                ax.text(
                    p,
                    v + 1.0,
                    value_format.format(v),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    ax.set_xticks(x, list(labels))
    ax.grid(axis="x", visible=False)


def draw_bars(
    frame: pd.DataFrame,
    labels: Sequence[str],
    title: str,
    *,
    bars: Sequence[tuple[str, str, str, str]] = ACCURACY_BARS,
    ylabel: str = "Accuracy (%)",
    annotate: bool = False,
) -> plt.Figure:
    """Grouped accuracy bars per run (default: global, TraceFL, random)."""
    with figure_style():
        width = min(TEXT_WIDTH, max(COLUMN_WIDTH, 0.75 * len(labels) + 1.4))
        fig, ax = plt.subplots(figsize=(width, 2.5))
        ax.set_ylim(0, 108)
        grouped_bars(ax, frame, labels, bars, annotate=annotate)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        legend_below(ax, ncol=3 if width > 4 else 2)
        return fig


def plot_bars(
    frame: pd.DataFrame,
    labels: Sequence[str],
    stem: Path,
    title: str,
    *,
    bars: Sequence[tuple[str, str, str, str]] = ACCURACY_BARS,
    ylabel: str = "Accuracy (%)",
    annotate: bool = False,
) -> list[Path]:
    """Draw with :func:`draw_bars` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(
            draw_bars(
                frame, labels, title, bars=bars, ylabel=ylabel, annotate=annotate
            ),
            stem,
        )


def draw_lines(
    frame: pd.DataFrame, x_column: str, title: str, xlabel: str
) -> plt.Figure:
    """Accuracy metrics against a swept numeric parameter (e.g. Dirichlet alpha)."""
    frame = frame.sort_values(x_column, key=lambda s: pd.to_numeric(s))
    x = numeric_column(frame, x_column)
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
        for column, name, style in (
            ("max_test_accuracy", "Global model (max over rounds)", "k-o"),
            ("paper_accuracy", "TraceFL, paper metric", "C0-s"),
            ("paper_random_baseline", "Random client, paper metric", "C0:"),
            ("strict_accuracy", "TraceFL, strict metric", "C1-^"),
            ("strict_random_baseline", "Random client, strict metric", "C1:"),
        ):
            ax.plot(x, 100 * numeric_column(frame, column), style, label=name)
        ax.set_xticks(list(x), [format_value(float(v)) for v in x])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Accuracy (%)")
        ax.set_ylim(-2, 104)
        ax.set_title(title)
        legend_below(ax, ncol=2)
        return fig


def plot_lines(
    frame: pd.DataFrame, x_column: str, stem: Path, title: str, xlabel: str
) -> list[Path]:
    """Draw with :func:`draw_lines` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(draw_lines(frame, x_column, title, xlabel), stem)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def draw_round_curves(
    experiment_dir: Path,
    columns: Sequence[tuple[str, str]],
    config_key: str,
    title: str,
    legend_title: str,
    label: Callable[[dict[str, Any]], str] | None = None,
) -> plt.Figure:
    """Per-round curves, one per run, in one panel per ``(column, ylabel)``.

    Runs are ordered by the numeric value of ``config_key`` (legend included),
    coloured along a sequential colour map, and told apart by marker and line
    style as well, so overlapping curves stay distinguishable in grey scale.
    """
    runs = []
    for run_dir in run_dirs(experiment_dir):
        cfg = read_run_config(run_dir)
        runs.append((_sort_key(cfg[config_key]), cfg, run_dir))
    runs.sort(key=lambda item: item[0])
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(runs), 1)))
    with figure_style():
        width = COLUMN_WIDTH if len(columns) == 1 else TEXT_WIDTH
        fig, axes = plt.subplots(
            1, len(columns), figsize=(width, 2.4), squeeze=False, sharey=True
        )
        for ax, (column, ylabel) in zip(axes[0], columns, strict=True):
            all_rounds: list[int] = []
            for i, (_, cfg, run_dir) in enumerate(runs):
                rounds = pd.read_csv(run_dir / "rounds.csv")
                all_rounds += rounds["round"].astype(int).tolist()
                ax.plot(
                    rounds["round"],
                    100 * numeric_column(rounds, column),
                    linestyle=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)],
                    markerfacecolor="white" if i % 2 else colors[i],
                    color=colors[i],
                    label=label(cfg) if label else format_value(cfg[config_key]),
                )
            integer_rounds(ax, all_rounds)
            ax.set_xlabel("Round")
            ax.set_ylabel(ylabel)
            ax.set_ylim(-2, 104)
        if len(columns) == 1:
            axes[0][0].set_title(title)
            legend_below(axes[0][0], ncol=2, title=legend_title, title_fontsize=7)
        else:
            fig.suptitle(title, fontsize=8)
            legend_right(axes[0][-1], title=legend_title, title_fontsize=7)
        return fig


def plot_round_curves(
    experiment_dir: Path,
    columns: Sequence[tuple[str, str]],
    config_key: str,
    stem: Path,
    title: str,
    legend_title: str,
    label: Callable[[dict[str, Any]], str] | None = None,
) -> list[Path]:
    """Draw with :func:`draw_round_curves` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(
            draw_round_curves(
                experiment_dir, columns, config_key, title, legend_title, label
            ),
            stem,
        )


def _sort_key(value: Any) -> tuple[int, float | str]:
    """Numbers in numeric order (10 < 50 < 100), then strings."""
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def draw_times(frame: pd.DataFrame, labels: Sequence[str], title: str) -> plt.Figure:
    """TraceFL vs FedDebug localization time per round (paper Fig. 6).

    Times are shown in milliseconds when every value is below one second.
    """
    seconds = pd.concat(
        [
            numeric_column(frame, "tracefl_seconds_per_round"),
            numeric_column(frame, "feddebug_seconds_per_round"),
        ]
    )
    scale, unit = (1000.0, "ms") if seconds.max(skipna=True) < 1 else (1.0, "s")
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.3))
        grouped_bars(
            ax,
            frame,
            labels,
            (
                ("tracefl_seconds_per_round", "TraceFL", "#1f77b4", ""),
                ("feddebug_seconds_per_round", "FedDebug", "#d62728", ""),
            ),
            scale=scale,
            annotate=True,
            value_format="{:.1f}" if scale > 1 else "{:.2f}",
        )
        ax.set_ylim(0, 1.2 * scale * float(seconds.max(skipna=True) or 1))
        ax.set_ylabel(f"Localization time per round ({unit})")
        ax.set_title(title)
        legend_below(ax, ncol=2)
        return fig


def plot_times(
    frame: pd.DataFrame, labels: Sequence[str], stem: Path, title: str
) -> list[Path]:
    """Draw with :func:`draw_times` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(draw_times(frame, labels, title), stem)


# ------------------------------------------------------------ figure sets


def _label_dataset_model(frame: pd.DataFrame) -> list[str]:
    return [f"{d}\n{m}" for d, m in zip(frame["dataset"], frame["model"], strict=True)]


def fig2_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Fig. 2: localization accuracy per dataset and model."""
    return plot_bars(
        frame,
        _label_dataset_model(frame),
        exp_dir / "fig2_localization",
        "TraceFL localization accuracy (Fig. 2)",
    )


def fig3_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Fig. 3: localization against the Dirichlet alpha."""
    return plot_lines(
        frame,
        "alpha",
        exp_dir / "fig3_alpha",
        r"Dirichlet $\alpha$ sweep (Fig. 3)",
        r"Dirichlet $\alpha$ (smaller: more non-IID)",
    )


def table3_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Table 3 / Fig. 5: scalability in the number of clients."""
    frame = frame.sort_values("num_clients", key=pd.to_numeric)
    paths = plot_bars(
        frame,
        [f"{n} clients" for n in frame["num_clients"]],
        exp_dir / "table3_clients",
        "Scalability: clients in total, 10 per round (Table 3)",
    )
    return paths + plot_round_curves(
        exp_dir,
        (
            ("paper_accuracy", "Paper metric (%)"),
            ("strict_accuracy", "Strict metric (%)"),
        ),
        "num-clients",
        exp_dir / "fig5_rounds",
        "TraceFL localization per round (Fig. 5)",
        "Clients in total",
    )


def _faulty_label(row: pd.Series) -> str:
    return rf"{row['dataset']}, $\alpha$ = {format_value(float(row['alpha']))}"


def table1_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Table 1 / Fig. 6: faulty-client localization and its cost vs FedDebug."""
    labels = [_faulty_label(row) for _, row in frame.iterrows()]
    paths = plot_bars(
        frame,
        labels,
        exp_dir / "table1_faulty",
        "Faulty-client localization (Table 1)",
        bars=FAULTY_BARS,
        ylabel="Faulty client found (%)",
        annotate=True,
    )
    return paths + plot_times(
        frame, labels, exp_dir / "fig6_time", "Localization time per round (Fig. 6)"
    )


def _dp_label(cfg: dict[str, Any]) -> str:
    noise = float(cfg["noise-multiplier"])
    if noise == 0 and float(cfg["clipping-norm"]) == 0:
        return "no DP"
    return (
        f"noise {format_value(noise)}, clip {format_value(float(cfg['clipping-norm']))}"
    )


def dp_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Table 2 / Fig. 4: differential privacy."""
    paths = plot_round_curves(
        exp_dir,
        (("test_accuracy", "Global test accuracy (%)"),),
        "noise-multiplier",
        exp_dir / "fig4_dp_accuracy",
        "Global accuracy under DP (Fig. 4)",
        "DP noise multiplier, clipping norm",
        label=_dp_label,
    )
    labels = [
        "no DP"
        if float(n) == 0 and float(c) == 0
        else f"noise {format_value(float(n))}\nclip {format_value(float(c))}"
        for n, c in zip(frame["noise_multiplier"], frame["clipping_norm"], strict=True)
    ]
    return paths + plot_bars(
        frame,
        labels,
        exp_dir / "table2_dp",
        "TraceFL under differential privacy (Table 2)",
    )


def ablation_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Beyond the paper: the data-share factor p_k and the layer decay beta."""
    labels = [
        rf"$p_k$ {format_value(bool(pk))}" + "\n" + rf"$\beta$ {format_value(bool(b))}"
        for pk, b in zip(
            frame["client_weights_normalization"], frame["enable_beta"], strict=True
        )
    ]
    return plot_bars(
        frame,
        labels,
        exp_dir / "ablation",
        r"Ablation: data share $p_k$ and layer decay $\beta$",
    )


def generic_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Any other experiment: accuracy bars per run."""
    return plot_bars(
        frame, frame["run"].astype(str).tolist(), exp_dir / "localization", exp_dir.name
    )


FigureSet = Callable[[Path, pd.DataFrame], list[Path]]

#: Figure set of each experiment (the experiment config's ``report`` key).
FIGURES: dict[str, FigureSet] = {
    "fig2": fig2_figures,
    "fig2-text": fig2_figures,
    "fig3": fig3_figures,
    "table3": table3_figures,
    "table1": table1_figures,
    "dp": dp_figures,
    "ablation": ablation_figures,
    "backdoor": backdoor_figures,  # tracefl.report_adversarial
    "gaming": gaming_figures,  # tracefl.report_adversarial
    "methods": methods_figures,
    "aggregators": aggregators_figures,
}


# ------------------------------------------------------------- entry point


def experiment_figure_set(experiment_dir: Path) -> str:
    """The figure set of an experiment directory.

    Read from ``experiment.json`` (written by the experiment runner), else the
    directory name without a ``-paper`` suffix; unknown names get the generic set.
    """
    meta = Path(experiment_dir) / "experiment.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("report", ""))
    return Path(experiment_dir).name.removesuffix("-paper")


def build_experiment_report(experiment_dir: Path) -> tuple[pd.DataFrame, list[Path]]:
    """Summary and figures of an experiment, plus every run's own figures.

    Returns the summary frame (empty if no run completed) and the experiment
    figures written.
    """
    experiment_dir = Path(experiment_dir)
    frame = summarize_experiment(experiment_dir)
    if frame.empty:
        return frame, []
    figures = FIGURES.get(experiment_figure_set(experiment_dir), generic_figures)
    paths = figures(experiment_dir, frame)
    for run_dir in run_dirs(experiment_dir):
        plot_run(run_dir)
    return frame, paths


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is one run's output directory."""
    return (Path(path) / "rounds.csv").is_file()


def is_experiment_dir(path: Path) -> bool:
    """Whether ``path`` holds run directories."""
    path = Path(path)
    return path.is_dir() and any(is_run_dir(p) for p in path.iterdir() if p.is_dir())


def build_report(path: Path) -> list[Path]:
    """Rebuild the figures (and, for an experiment, the summaries) of ``path``.

    Raises
    ------
    FileNotFoundError
        ``path`` is neither a run nor an experiment directory.

    """
    path = Path(path)
    if is_run_dir(path):
        return plot_run(path)
    if is_experiment_dir(path):
        frame, paths = build_experiment_report(path)
        return (
            [path / "summary.csv", path / "summary.tex", *paths] if len(frame) else []
        )
    raise FileNotFoundError(
        f"{path} is neither a run directory (with rounds.csv) nor an experiment "
        "directory (with run sub-directories)"
    )
