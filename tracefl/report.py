"""Experiment summaries and figures: one row per run, as CSV, LaTeX, Markdown, PNG/PDF.

An *experiment* directory holds one sub-directory per run (each with
``rounds.csv`` and ``run.json``, as written by the ServerApp) and, when the
experiment runner made it, ``experiment.json`` naming its figure set.
Everything here reads those files only, so summaries and figures can be rebuilt
at any time without re-running training (``tracefl report <dir>``).

:data:`FIGURES` maps an experiment's figure set (``fig2``, ``fig3``, ``table1``,
...) to the function drawing its figures; :func:`build_report` rebuilds a run
or an experiment directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tracefl import method_comparison
from tracefl.config import FUSIONS, parse_run_config
from tracefl.plotting import (
    COLUMN_WIDTH,
    LINESTYLES,
    METHOD_STYLES,
    TEXT_WIDTH,
    figure_style,
    format_value,
    integer_rounds,
    legend_below,
    legend_right,
    numeric_column,
    plot_run,
    read_run_config,
    save_figure,
)
from tracefl.report_adversarial import backdoor_figures, gaming_figures
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
#: Suffixes of the columns shown in percent.
PERCENT_SUFFIXES = ("accuracy", "baseline", "top3", "min", "round1")
#: Digits kept in ``summary.csv`` (means of values rounded to 6 decimals).
CSV_DECIMALS = 6
NOT_APPLICABLE = "n/a"


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


def _rounded(frame: pd.DataFrame) -> pd.DataFrame:
    """Floats rounded to :data:`CSV_DECIMALS` (no ``0.10000000000000002``)."""
    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = out[column].round(CSV_DECIMALS)
    return out


def summarize_experiment(experiment_dir: Path) -> pd.DataFrame:
    """Summary table of every run, written as ``summary.csv`` and ``summary.tex``."""
    experiment_dir = Path(experiment_dir)
    rows = [summarize_run(d) for d in run_dirs(experiment_dir)]
    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    order = [*SETTING_COLUMNS, "run"]
    frame = frame.sort_values(order, kind="stable").reset_index(drop=True)
    frame = _rounded(frame)
    write_csv(experiment_dir / "summary.csv", frame.to_dict("records"), SUMMARY_COLUMNS)
    write_text(experiment_dir / "summary.tex", latex_table(frame))
    return frame


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


def _shown_columns(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c in frame and frame[c].notna().any()]


def latex_table(frame: pd.DataFrame) -> str:
    """A compact LaTeX table (accuracies in percent) of the informative columns.

    Dataset and model are always shown; other settings only where they vary.
    """
    varying = [
        c
        for c in SETTING_COLUMNS
        if c in ("dataset", "model") or (c in frame and frame[c].nunique() > 1)
    ]
    columns = _shown_columns(frame, (*varying, *ACCURACY_COLUMNS))
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


def markdown_table(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """Markdown table of ``columns``; accuracies and baselines in percent."""
    shown = _shown_columns(frame, columns)
    lines = [
        "| " + " | ".join(c.replace("_", " ") for c in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    for _, row in frame[shown].iterrows():
        lines.append("| " + " | ".join(format_cell(c, row[c]) for c in shown) + " |")
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
                ax.text(
                    p,
                    1.5,
                    NOT_APPLICABLE,
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    color="0.35",
                )
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


# ------------------------------------------------------ method comparison

#: Panels of the method comparison: (mode, value column, chance column, title).
METHOD_PANELS = (
    ("correct", "strict", "strict_chance", "Strict accuracy (%), all rounds"),
    (
        "correct",
        "strict_converged",
        "strict_chance",
        "Strict accuracy (%), converged rounds",
    ),
    (
        "correct",
        "decisive_strict",
        "decisive_chance",
        "Strict accuracy (%), decisive inputs",
    ),
    ("correct", "graded", "graded_chance", "Graded score (%)"),
    ("correct", "spearman", "", r"Spearman $\rho$ with label counts ($\times$100)"),
    ("correct", "loo_agreement", "", "Same client as exact LOO (%)"),
    ("faulty", "faulty", "faulty_chance", "Faulty client found (%), all rounds"),
    (
        "faulty",
        "faulty_converged",
        "faulty_chance",
        "Faulty client found (%), converged rounds",
    ),
    ("faulty", "loo_agreement", "", "Same client as exact LOO (%)"),
)


def _method_look(method: str, index: int) -> tuple[str, str | None]:
    """Colour and hatch of a method's bars (restricted variants: hatched)."""
    base = method.removesuffix(method_comparison.RESTRICTED)
    color = METHOD_STYLES.get(base, (f"C{(7 + index) % 10}", "o"))[0]
    return color, ("////" if base != method else None)


def _setting_tick(row: pd.Series, show_model: bool) -> str:
    lines = [rf"$\alpha$={format_value(float(row['alpha']))}"]
    lines.append(f"{row['clients_per_round']}/{row['num_clients']} clients")
    if show_model:
        lines.insert(0, str(row["model"]))
    return "\n".join(lines)


def draw_method_comparison(summary: pd.DataFrame, title: str = "") -> plt.Figure:
    """Every method per setting: mean over seeds with its 95% interval and chance.

    ``summary`` is :func:`tracefl.method_comparison.compare_methods`' frame.
    One panel per metric of :data:`METHOD_PANELS` whose mode (correct or
    faulty) the experiment has; in each, a group of bars per setting, one bar
    per method, the 95% interval over (seed, round, label) cells as an error
    bar and the chance level of that method's ranked clients as a black tick
    across its bar; a value that does not exist (no converged round) is marked
    ``n/a``. On the decisive panel each setting's label gives the share of
    decisive inputs (of the first method).
    """
    settings = list(dict.fromkeys(summary["setting"]))
    methods = list(dict.fromkeys(summary["method"]))
    modes = {"faulty" if f else "correct" for f in summary["faulty_mode"]}
    panels = [p for p in METHOD_PANELS if p[0] in modes]
    show_model = summary["model"].nunique() > 1
    ncol = 1 if len(panels) == 1 else (2 if len(panels) == 2 or len(panels) > 3 else 3)
    nrow = -(-len(panels) // ncol)
    width = COLUMN_WIDTH if ncol == 1 else TEXT_WIDTH
    with figure_style():
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(width, 1.9 * nrow + 1.0), squeeze=False
        )
        for ax in axes.flat[len(panels) :]:
            ax.set_visible(False)
        for ax, (mode, column, chance, panel_title) in zip(
            axes.flat, panels, strict=False
        ):
            shown = [
                s
                for s in settings
                if bool(summary.loc[summary["setting"] == s, "faulty_mode"].iloc[0])
                == (mode == "faulty")
            ]
            x = np.arange(len(shown))
            bar = 0.8 / len(methods)
            for i, method in enumerate(methods):
                rows = (
                    summary[summary["method"] == method]
                    .set_index("setting")
                    .reindex(shown)
                )
                values = 100 * numeric_column(rows, column).to_numpy(dtype=float)
                low = 100 * numeric_column(rows, f"{column}_low").to_numpy(dtype=float)
                high = 100 * numeric_column(rows, f"{column}_high").to_numpy(
                    dtype=float
                )
                pos = x + (i - len(methods) / 2 + 0.5) * bar
                color, hatch = _method_look(method, i)
                err = np.vstack([values - low, high - values])
                err = np.where(np.isfinite(err), err, 0.0)
                ax.bar(
                    pos,
                    np.nan_to_num(values),
                    bar,
                    color=color,
                    hatch=hatch,
                    edgecolor="white" if hatch else color,
                    linewidth=0,
                    yerr=err,
                    error_kw={"elinewidth": 0.6, "capsize": 0, "ecolor": "0.2"},
                )
                exists = rows["method"].notna().to_numpy()
                for p, v, there in zip(pos, values, exists, strict=True):
                    if there and np.isnan(v):
                        ax.text(
                            p,
                            1.5,
                            NOT_APPLICABLE,
                            ha="center",
                            va="bottom",
                            fontsize=6,
                            rotation=90,
                            color="0.35",
                        )
                if chance:
                    level = 100 * numeric_column(rows, chance).to_numpy(dtype=float)
                    ax.hlines(
                        level,
                        pos - bar / 2,
                        pos + bar / 2,
                        colors="k",
                        linewidth=1.0,
                        label="_chance",
                    )
            ticks = [
                _setting_tick(summary[summary["setting"] == s].iloc[0], show_model)
                for s in shown
            ]
            if column == "decisive_strict":
                share = [
                    summary[summary["setting"] == s]["decisive_share"].iloc[0]
                    for s in shown
                ]
                ticks = [
                    f"{t}\n{100 * v:.0f}% decisive"
                    for t, v in zip(ticks, share, strict=True)
                ]
            ax.set_xticks(x, ticks)
            ax.grid(axis="x", visible=False)
            ax.set_title(panel_title)
            if column == "spearman":
                lowest = np.nanmin(
                    [0.0, *(100 * numeric_column(summary, "spearman_low").dropna())]
                )
                ax.set_ylim(min(-25.0, lowest - 10), 104)
                ax.axhline(0, color="k", linewidth=0.6)
            else:
                ax.set_ylim(0, 104)
        handles = []
        for i, m in enumerate(methods):
            color, hatch = _method_look(m, i)
            handles.append(
                Patch(
                    facecolor=color,
                    hatch=hatch,
                    edgecolor="white" if hatch else color,
                    label=m,
                )
            )
        handles.append(Line2D([], [], color="k", label="chance (random client)"))
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 4),
            bbox_to_anchor=(0.5, 0.0),
        )
        if title:
            fig.suptitle(title, fontsize=8)
        legend_rows = -(-len(handles) // min(len(handles), 4))
        bottom = (0.2 + 0.17 * legend_rows) / fig.get_figheight()
        fig.tight_layout(rect=(0, bottom, 1, 1))
        return fig


def methods_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Issue 14: every attribution method per setting, over the seeds.

    Writes ``methods_summary.csv`` (:func:`~tracefl.method_comparison.compare_methods`),
    ``methods_summary.md`` (the main metric as a method x setting table, then
    every metric per setting and method) and ``methods.{png,pdf}``.
    """
    summary = method_comparison.compare_methods(run_dirs(exp_dir))
    if summary.empty:
        return []
    csv_path = exp_dir / "methods_summary.csv"
    write_csv(csv_path, _rounded(summary).to_dict("records"), list(summary.columns))
    md_path = exp_dir / "methods_summary.md"
    main = "faulty" if summary["faulty_mode"].all() else "strict"
    write_text(
        md_path,
        method_comparison.markdown_pivot(summary, main)
        + "\n"
        + method_comparison.markdown_table(summary),
    )
    seeds = sorted(set(summary["seeds"]))
    title = (
        f"Attribution methods, mean over {'/'.join(str(s) for s in seeds)} seeds "
        "with 95% interval over (seed, round, label) cells"
    )
    with figure_style():
        figure = save_figure(
            draw_method_comparison(summary, title), exp_dir / "methods"
        )
    return [csv_path, md_path, *figure]


def generic_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Any other experiment: accuracy bars per run."""
    return plot_bars(
        frame, frame["run"].astype(str).tolist(), exp_dir / "localization", exp_dir.name
    )


# ------------------------------------------------------------ aggregators

#: Per-aggregator columns of ``aggregators.csv`` (faulty = the faulty run).
AGGREGATOR_COLUMNS = (
    "fusion",
    "clean_max_test_accuracy",
    "clean_final_test_accuracy",
    "faulty_max_test_accuracy",
    "faulty_final_test_accuracy",
    "faulty_data_share",
    "faulty_fusion_share",
    "faulty_fusion_share_min",
    "faulty_fusion_share_max",
    "rounds",
    "rounds_faulty_excluded",
    "faulty_traced_rounds",
    "faulty_inputs_traced",
)
#: Per (aggregator, method) columns of ``aggregator_methods.csv``: means over
#: the traced rounds of the clean run (strict, paper) and of the faulty run.
AGGREGATOR_METHOD_COLUMNS = (
    "fusion",
    "method",
    "clean_traced_rounds",
    "strict_accuracy",
    "strict_random_baseline",
    "paper_accuracy",
    "paper_random_baseline",
    "clean_pseudo_would_win",
    "faulty_traced_rounds",
    "faulty_accuracy",
    "faulty_random_baseline",
    "faulty_pseudo_would_win",
)
#: Below this a client's mean share counts as excluded (shares are rounded to 1e-6).
EXCLUDED_SHARE = 1e-9


def _aggregator_runs(exp_dir: Path) -> dict[str, dict[str, Path]]:
    """``{fusion: {"clean" | "faulty": run_dir}}`` of the completed runs.

    Raises
    ------
    ValueError
        Two completed runs with the same aggregator and faulty setting.

    """
    runs: dict[str, dict[str, Path]] = {}
    for run_dir in run_dirs(exp_dir):
        cfg = read_run_config(run_dir)
        kind = "faulty" if cfg.get("faulty-clients") else "clean"
        fusion = str(cfg.get("fusion", "fedavg"))
        seen = runs.setdefault(fusion, {})
        if kind in seen:
            raise ValueError(
                f"{exp_dir}: runs {seen[kind].name} and {run_dir.name} are both "
                f"{kind} runs of fusion '{fusion}'; keep one per aggregator"
            )
        seen[kind] = run_dir
    order = {name: i for i, name in enumerate(FUSIONS)}
    return dict(sorted(runs.items(), key=lambda kv: order.get(kv[0], len(order))))


def faulty_shares(run_dir: Path) -> pd.DataFrame:
    """Per round: the faulty clients' share of the client part of the aggregate.

    ``fusion_share`` (``clients.csv``) is each client's ``A_k`` averaged over
    the model's coordinates; divided by the round's sum over fused clients it
    is comparable across aggregators (FedAdam's shares carry its gain ``G``).
    Returns columns ``round``, ``fusion_share`` and ``data_share`` (the
    faulty clients' ``n_k / sum_j n_j``, FedAvg's share).
    """
    faulty = set(parse_run_config(read_run_config(run_dir)).faulty_client_ids)
    clients = pd.read_csv(run_dir / "clients.csv")
    clients = clients[clients["status"] == "fused"].copy()
    clients["faulty"] = clients["client"].astype(int).isin(faulty)
    rows = []
    for server_round, held in clients.groupby("round"):
        share = numeric_column(held, "fusion_share")
        examples = numeric_column(held, "num_examples")
        rows.append(
            {
                "round": int(server_round),
                "fusion_share": float(share[held["faulty"]].sum() / share.sum()),
                "data_share": float(examples[held["faulty"]].sum() / examples.sum()),
            }
        )
    return pd.DataFrame(rows, columns=["round", "fusion_share", "data_share"])


def _method_means(run_dir: Path | None, columns: Sequence[str]) -> pd.DataFrame:
    """Per method: traced rounds and the mean of ``columns`` over them."""
    names = ["method", "traced_rounds", *columns]
    if run_dir is None or not (run_dir / "methods.csv").is_file():
        return pd.DataFrame(columns=names).set_index("method")
    methods = pd.read_csv(run_dir / "methods.csv")
    grouped = methods.groupby("method", sort=False)
    out = pd.DataFrame({"traced_rounds": grouped["round"].nunique()})
    for column in columns:
        out[column] = grouped[column].apply(
            lambda s: pd.to_numeric(s, errors="coerce").mean()
        )
    return out


def aggregator_tables(exp_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The aggregator experiment's two tables, from its run directories.

    Each aggregator has a clean run (localization: strict and paper metrics
    with their chance levels) and a faulty run (one label-flipping client).
    Returns the per-aggregator table (:data:`AGGREGATOR_COLUMNS`: test
    accuracy, the faulty client's share per round, rounds where it was
    excluded) and the per-(aggregator, method) table
    (:data:`AGGREGATOR_METHOD_COLUMNS`). A run that is missing leaves its
    columns NaN.
    """
    per_fusion, per_method = [], []
    for fusion, runs in _aggregator_runs(exp_dir).items():
        clean, faulty = runs.get("clean"), runs.get("faulty")
        row: dict[str, Any] = {"fusion": fusion}
        for kind, run_dir in (("clean", clean), ("faulty", faulty)):
            if run_dir is not None:
                test = numeric_column(
                    pd.read_csv(run_dir / "rounds.csv"), "test_accuracy"
                )
                row[f"{kind}_max_test_accuracy"] = float(test.max())
                row[f"{kind}_final_test_accuracy"] = float(test.iloc[-1])
        if faulty is not None:
            shares = faulty_shares(faulty)
            rounds = pd.read_csv(faulty / "rounds.csv")
            traced = rounds[rounds["status"] == "traced"]
            row.update(
                {
                    "faulty_data_share": float(shares["data_share"].mean()),
                    "faulty_fusion_share": float(shares["fusion_share"].mean()),
                    "faulty_fusion_share_min": float(shares["fusion_share"].min()),
                    "faulty_fusion_share_max": float(shares["fusion_share"].max()),
                    "rounds": len(rounds),
                    "rounds_faulty_excluded": int(
                        (shares["fusion_share"] < EXCLUDED_SHARE).sum()
                    ),
                    "faulty_traced_rounds": len(traced),
                    "faulty_inputs_traced": int(
                        numeric_column(traced, "num_traced").sum()
                    ),
                }
            )
        per_fusion.append(row)
        clean_means = _method_means(
            clean,
            (
                "strict_accuracy",
                "strict_random_baseline",
                "paper_accuracy",
                "paper_random_baseline",
                "pseudo_would_win",
            ),
        )
        faulty_means = _method_means(
            faulty, ("faulty_accuracy", "faulty_random_baseline", "pseudo_would_win")
        )
        names = list(dict.fromkeys([*clean_means.index, *faulty_means.index]))
        for method in names:
            c = clean_means.loc[method] if method in clean_means.index else {}
            f = faulty_means.loc[method] if method in faulty_means.index else {}
            per_method.append(
                {
                    "fusion": fusion,
                    "method": method,
                    "clean_traced_rounds": c.get("traced_rounds", 0),
                    "strict_accuracy": c.get("strict_accuracy"),
                    "strict_random_baseline": c.get("strict_random_baseline"),
                    "paper_accuracy": c.get("paper_accuracy"),
                    "paper_random_baseline": c.get("paper_random_baseline"),
                    "clean_pseudo_would_win": c.get("pseudo_would_win"),
                    "faulty_traced_rounds": f.get("traced_rounds", 0),
                    "faulty_accuracy": f.get("faulty_accuracy"),
                    "faulty_random_baseline": f.get("faulty_random_baseline"),
                    "faulty_pseudo_would_win": f.get("pseudo_would_win"),
                }
            )
    return (
        _rounded(pd.DataFrame(per_fusion, columns=list(AGGREGATOR_COLUMNS))),
        _rounded(pd.DataFrame(per_method, columns=list(AGGREGATOR_METHOD_COLUMNS))),
    )


def draw_heatmap(
    ax: plt.Axes,
    values: np.ndarray,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    title: str,
    *,
    cmap: str = "viridis",
) -> None:
    """Percentages as an annotated heatmap; NaN cells grey and marked ``n/a``.

    ``values`` is ``(R, C)`` in ``[0, 1]`` (shown as ``0..100``).
    """
    values = np.asarray(values, dtype=float)
    shown = np.ma.masked_invalid(100 * values)
    colormap = plt.get_cmap(cmap).with_extremes(bad="0.88")
    ax.imshow(shown, cmap=colormap, vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(100 * values):
        if np.isnan(value):
            text, color = NOT_APPLICABLE, "0.35"
        else:
            text = f"{value:.0f}"
            color = "black" if value > 60 else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    ax.set_xticks(range(len(column_labels)), list(column_labels))
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)


def _by_method(
    table: pd.DataFrame, fusions: Sequence[str], methods: Sequence[str], column: str
) -> np.ndarray:
    """``(len(fusions), len(methods))`` values of ``column`` (NaN where absent)."""
    wide = table.pivot(index="fusion", columns="method", values=column)
    wide = wide.reindex(index=list(fusions), columns=list(methods))
    return wide.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def _chance(table: pd.DataFrame, fusions: Sequence[str], column: str) -> np.ndarray:
    """``(len(fusions), 1)`` chance level of ``column`` (the mean over methods)."""
    means = table.groupby("fusion")[column].apply(
        lambda s: pd.to_numeric(s, errors="coerce").mean()
    )
    return means.reindex(list(fusions)).to_numpy(dtype=float)[:, None]


def draw_aggregators(
    per_fusion: pd.DataFrame, per_method: pd.DataFrame, shares: pd.DataFrame
) -> plt.Figure:
    """The aggregator experiment in four heatmaps (rows: aggregators).

    (a) the faulty client's share of the aggregate per round; (b) how often
    each method blames the faulty client, with chance; (c) how often the
    ``server`` pseudo-client would have outscored every client in the faulty
    runs; (d) strict localization in the clean runs, with chance.
    ``shares`` has columns ``fusion``, ``round``, ``fusion_share``.
    """
    fusions = per_fusion["fusion"].tolist()
    methods = list(dict.fromkeys(per_method["method"]))
    short = [
        m.replace("cross-round-unweighted", "cross-round\n(unweighted)")
        for m in methods
    ]
    round_values = sorted(shares["round"].unique()) if len(shares) else []
    share_grid = (
        shares.pivot(index="fusion", columns="round", values="fusion_share")
        .reindex(index=fusions, columns=round_values)
        .to_numpy(dtype=float)
    )
    with figure_style():
        fig, axes = plt.subplots(
            2,
            2,
            figsize=(TEXT_WIDTH, 6.2),
            gridspec_kw={"hspace": 0.65, "wspace": 0.35},
        )
        draw_heatmap(
            axes[0, 0],
            share_grid,
            fusions,
            [str(int(r)) for r in round_values],
            "(a) Faulty client's share of the aggregate (%)"
            + (
                f"\n(its data share, FedAvg's: {_pct(shares['data_share'].mean())})"
                if len(shares)
                else ""
            ),
            cmap="magma",
        )
        axes[0, 0].set_xlabel("Round")
        draw_heatmap(
            axes[0, 1],
            np.hstack(
                [
                    _by_method(per_method, fusions, methods, "faulty_accuracy"),
                    _chance(per_method, fusions, "faulty_random_baseline"),
                ]
            ),
            fusions,
            [*short, "chance"],
            "(b) Faulty runs: faulty client blamed (%)",
        )
        draw_heatmap(
            axes[1, 0],
            _by_method(per_method, fusions, methods, "faulty_pseudo_would_win"),
            fusions,
            short,
            "(c) Faulty runs: server pseudo-client would win (%)",
            cmap="cividis",
        )
        draw_heatmap(
            axes[1, 1],
            np.hstack(
                [
                    _by_method(per_method, fusions, methods, "strict_accuracy"),
                    _chance(per_method, fusions, "strict_random_baseline"),
                ]
            ),
            fusions,
            [*short, "chance"],
            "(d) Clean runs: strict localization (%)",
        )
        for ax in (axes[0, 1], axes[1, 0], axes[1, 1]):
            ax.tick_params(axis="x", labelrotation=90)
        for ax in (axes[0, 1], axes[1, 1]):  # chance stands apart from the methods
            ax.axvline(len(methods) - 0.5, color="white", linewidth=2.5)
        return fig


def _pct(value: Any) -> str:
    """A share in whole percent, ``n/a`` when missing."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return NOT_APPLICABLE if pd.isna(number) else f"{100 * float(number):.0f}"


def _pair(first: Any, second: Any) -> str:
    return f"{_pct(first)} / {_pct(second)}"


def _rows(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]


def aggregator_markdown(per_fusion: pd.DataFrame, per_method: pd.DataFrame) -> str:
    """The aggregator experiment as three Markdown tables (percent, whole).

    1. faulty runs: the faulty client's share and how often each method blames
       it, with chance; 2. how often the ``server`` pseudo-client would have
       outscored every client (faulty / clean run); 3. clean runs: strict /
       paper-metric localization per method, with chance.
    """
    methods = list(dict.fromkeys(per_method["method"]))
    cell = per_method.set_index(["fusion", "method"])

    def get(fusion: str, method: str, column: str) -> Any:
        key = (fusion, method)
        return cell.loc[key, column] if key in cell.index else None

    def chance(fusion: str, column: str) -> Any:
        values = per_method.loc[per_method["fusion"] == fusion, column]
        return pd.to_numeric(values, errors="coerce").mean()

    faulty, server, clean = [], [], []
    for _, row in per_fusion.iterrows():
        fusion = str(row["fusion"])
        name = f"`{fusion}`"
        rounds = pd.to_numeric(pd.Series([row["rounds"]])).iloc[0]
        faulty.append(
            [
                name,
                _pair(row["clean_max_test_accuracy"], row["faulty_max_test_accuracy"]),
                f"{_pct(row['faulty_fusion_share'])} "
                f"({_pct(row['faulty_fusion_share_min'])}–"
                f"{_pct(row['faulty_fusion_share_max'])})",
                NOT_APPLICABLE
                if pd.isna(rounds)
                else f"{int(row['rounds_faulty_excluded'])} of {int(rounds)}",
                NOT_APPLICABLE
                if pd.isna(rounds)
                else f"{int(row['faulty_traced_rounds'])} "
                f"({int(row['faulty_inputs_traced'])})",
                *(_pct(get(fusion, m, "faulty_accuracy")) for m in methods),
                _pct(chance(fusion, "faulty_random_baseline")),
            ]
        )
        server.append(
            [
                name,
                *(
                    _pair(
                        get(fusion, m, "faulty_pseudo_would_win"),
                        get(fusion, m, "clean_pseudo_would_win"),
                    )
                    for m in methods
                ),
            ]
        )
        clean.append(
            [
                name,
                _pct(row["clean_max_test_accuracy"]),
                *(
                    _pair(
                        get(fusion, m, "strict_accuracy"),
                        get(fusion, m, "paper_accuracy"),
                    )
                    for m in methods
                ),
                _pair(
                    chance(fusion, "strict_random_baseline"),
                    chance(fusion, "paper_random_baseline"),
                ),
            ]
        )
    lines = _rows(
        [
            "`fusion`",
            "max test acc. (clean / faulty)",
            "faulty client's share: mean (min–max)",
            "rounds it is excluded",
            "rounds traced (inputs)",
            *methods,
            "chance",
        ],
        faulty,
    )
    lines += ["", *_rows(["`fusion`", *methods], server), ""]
    lines += _rows(
        ["`fusion`", "max test acc.", *methods, "chance"],
        clean,
    )
    return "\n".join(lines) + "\n"


def aggregators_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Aggregators: the faulty client's share, who is blamed, localization.

    Writes ``aggregators.csv``, ``aggregator_methods.csv`` (see
    :func:`aggregator_tables`), ``aggregator_shares.csv`` (the faulty client's
    share per round and aggregator) and ``aggregators.md`` (the README's
    tables, :func:`aggregator_markdown`) beside the figure.
    """
    per_fusion, per_method = aggregator_tables(exp_dir)
    shares = pd.concat(
        [
            faulty_shares(runs["faulty"]).assign(fusion=fusion)
            for fusion, runs in _aggregator_runs(exp_dir).items()
            if "faulty" in runs
        ]
        or [pd.DataFrame(columns=["round", "fusion_share", "data_share", "fusion"])],
        ignore_index=True,
    )
    write_csv(
        exp_dir / "aggregators.csv", per_fusion.to_dict("records"), AGGREGATOR_COLUMNS
    )
    write_csv(
        exp_dir / "aggregator_methods.csv",
        per_method.to_dict("records"),
        AGGREGATOR_METHOD_COLUMNS,
    )
    write_text(exp_dir / "aggregators.md", aggregator_markdown(per_fusion, per_method))
    share_columns = ("fusion", "round", "fusion_share", "data_share")
    write_csv(
        exp_dir / "aggregator_shares.csv",
        _rounded(shares).to_dict("records"),
        share_columns,
    )
    with figure_style():
        return save_figure(
            draw_aggregators(per_fusion, per_method, shares), exp_dir / "aggregators"
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
