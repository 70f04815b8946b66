"""The method comparison figure set (issue 14): every attribution method side by side.

Reads the runs' ``methods.csv``/``inputs.csv`` through
:mod:`tracefl.method_comparison`; writes ``methods_summary.csv`` and
``methods.{png,pdf}``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tracefl import method_comparison
from tracefl.plotting import (
    COLUMN_WIDTH,
    METHOD_STYLES,
    TEXT_WIDTH,
    figure_style,
    format_value,
    mark_not_applicable,
    numeric_column,
    save_figure,
)
from tracefl.report_tables import (
    NOT_APPLICABLE,
    rounded,
    run_dirs,
)
from tracefl.results_io import write_csv, write_text

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
    lines.append(f"{row['clients_per_round']}/{row['num_clients']}")
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
                        mark_not_applicable(ax, p, NOT_APPLICABLE)
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
                    f"{t}\n{100 * v:.0f}% dec."
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
    write_csv(csv_path, rounded(summary).to_dict("records"), list(summary.columns))
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
        "with 95% interval over (seed, round, label) cells\n"
        r"x: Dirichlet $\alpha$, clients per round / clients"
    )
    with figure_style():
        figure = save_figure(
            draw_method_comparison(summary, title), exp_dir / "methods"
        )
    return [csv_path, md_path, *figure]
