"""Figures of one run, rebuilt from its CSVs alone (no training needed).

``plot_run(out_dir)`` reads ``rounds.csv``, ``inputs.csv``, ``clients.csv`` and
``run.json`` and writes, as PNG and PDF:

* ``accuracy.{png,pdf}`` - global test accuracy and localization accuracy
  (paper and strict metrics, or faulty-client accuracy and FedDebug) per round,
  with the random baselines as dotted lines;
* ``provenance_round_<r>.{png,pdf}`` - the paper's Fig. 1 view: the client
  probabilities of every traced input next to each client's label distribution.

Figures are drawn at the size they are printed (one column ``COLUMN_WIDTH``
or the full text width ``TEXT_WIDTH`` of a two-column paper), so 8 pt fonts
stay 8 pt; legends sit outside the data, round axes have integer ticks.
:func:`plot_client_probabilities` is shared with ``tracefl explain``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.axes_grid1 import make_axes_locatable

from tracefl.results_io import atomic_open

#: Width of one column / of the text of a two-column paper (inches).
COLUMN_WIDTH = 3.4
TEXT_WIDTH = 7.0
#: Font sizes (pt) at that size: readable when pasted at 100 %.
FONT_SIZE = 8
SMALL_FONT_SIZE = 7

STYLE = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE,
    "axes.labelsize": FONT_SIZE,
    "xtick.labelsize": SMALL_FONT_SIZE,
    "ytick.labelsize": SMALL_FONT_SIZE,
    "legend.fontsize": SMALL_FONT_SIZE,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "pdf.fonttype": 42,
    "svg.fonttype": "none",
}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """TraceFL's figure style, for the duration of one plot (no global change)."""
    with mpl.rc_context(STYLE):
        yield


def save_figure(fig: plt.Figure, stem: Path) -> list[Path]:
    """Save ``fig`` as ``stem.png`` and ``stem.pdf`` atomically, then close it."""
    paths = []
    for suffix in (".png", ".pdf"):
        path = stem.with_suffix(suffix)
        with atomic_open(path, "wb") as handle:
            # No creation date in the PDF: re-plotting the same CSVs gives the
            # same bytes, so regenerated figures do not churn in version control.
            metadata = {"CreationDate": None} if suffix == ".pdf" else None
            fig.savefig(
                handle,
                format=suffix[1:],
                dpi=200,
                bbox_inches="tight",
                metadata=metadata,
            )
        paths.append(path)
    plt.close(fig)
    return paths


def numeric_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """``frame[column]`` as floats ("n/a" and blanks become NaN; all NaN if absent)."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[column], errors="coerce")


def integer_rounds(ax: plt.Axes, rounds: Sequence[float]) -> None:
    """Integer ticks on a round axis (every round when there are few)."""
    values = sorted({int(r) for r in rounds})
    if values and len(values) <= 12:
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if values:
        ax.set_xlim(values[0] - 0.3, values[-1] + 0.3)


def legend_below(ax: plt.Axes, ncol: int = 2, **kwargs: Any) -> None:
    """A legend under the axes (outside the data), ``ncol`` entries per row."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=ncol,
        handlelength=2.2,
        columnspacing=1.2,
        **kwargs,
    )


def legend_right(ax: plt.Axes, **kwargs: Any) -> None:
    """A legend right of the axes (outside the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), **kwargs
        )


def format_value(value: Any) -> str:
    """A setting value for labels: ``0.1`` not ``0.10000000000000002``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_title(config: Mapping[str, Any]) -> str:
    """A figure title from a run's config, e.g. ``mnist, cnn, 10 clients, α=0.3``."""
    clients = config.get("num-clients")  # 0: the federation's, if not recorded
    parts = [
        str(config.get("dataset", "")),
        str(config.get("model", "")),
        f"{clients} clients" if clients else "",
        rf"$\alpha$ = {format_value(config.get('dirichlet-alpha', ''))}",
    ]
    if float(config.get("noise-multiplier", 0) or 0) > 0:
        parts.append(f"DP noise {format_value(config['noise-multiplier'])}")
    if config.get("faulty-clients"):
        parts.append(f"faulty client(s) {config['faulty-clients']}")
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------- accuracy


def draw_accuracy(rounds: pd.DataFrame, title: str = "") -> plt.Figure:
    """Global and localization accuracy per round, with random baselines."""
    faulty = numeric_column(rounds, "faulty_accuracy").notna().any()
    series = (
        [
            ("faulty_accuracy", "TraceFL: faulty client found", "C0", "-", "s"),
            ("feddebug_accuracy", "FedDebug: faulty client found", "C3", "-", "^"),
            ("faulty_random_baseline", "Random client", "C0", ":", ""),
        ]
        if faulty
        else [
            ("paper_accuracy", "TraceFL, paper metric", "C0", "-", "s"),
            ("paper_random_baseline", "Random client, paper metric", "C0", ":", ""),
            ("strict_accuracy", "TraceFL, strict metric", "C1", "-", "^"),
            ("strict_random_baseline", "Random client, strict metric", "C1", ":", ""),
        ]
    )
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
        r = rounds["round"]
        ax.plot(
            r,
            100 * numeric_column(rounds, "test_accuracy"),
            "-o",
            color="k",
            label="Global model accuracy",
        )
        for column, label, color, line, marker in series:
            values = numeric_column(rounds, column)
            known = values.notna()
            if known.any():
                # Only the rounds that have a value: a line across an untraced
                # round instead of a gap, and a point even for a single round.
                ax.plot(
                    r[known],
                    100 * values[known],
                    linestyle=line,
                    marker=marker or ".",
                    color=color,
                    label=label,
                )
        untraced = r[rounds["status"] != "traced"] if "status" in rounds else r[:0]
        for i, server_round in enumerate(untraced):
            ax.axvspan(
                server_round - 0.5,
                server_round + 0.5,
                color="0.9",
                zorder=0,
                label="Round not traced (see rounds.csv)" if i == 0 else None,
            )
        ax.set_xlabel("Round")
        ax.set_ylabel("Accuracy (%)")
        ax.set_ylim(-2, 104)
        integer_rounds(ax, r)
        legend_below(ax, ncol=2)
        if title:
            ax.set_title(title)
        return fig


def plot_accuracy(rounds: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    """Draw with :func:`draw_accuracy` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(draw_accuracy(rounds, title), stem)


# ------------------------------------------------------ client probabilities


def draw_client_probabilities(
    probs: np.ndarray,
    row_labels: Sequence[str],
    client_labels: Sequence[str],
    *,
    title: str,
    scaled_scores: bool = False,
    traced: np.ndarray | None = None,
    label_share: np.ndarray | None = None,
    class_labels: Sequence[str] | None = None,
    images: np.ndarray | None = None,
) -> plt.Figure:
    """Per-input client probabilities (or scores) as a heatmap, the top client boxed.

    Parameters
    ----------
    probs
        ``(B, K)`` probability of each client for each input; with
        ``scaled_scores``, scores divided by each input's largest absolute
        score (in ``[-1, 1]``, drawn with a diverging colour map around 0).
    row_labels, client_labels
        ``B`` input names and ``K`` client names.
    title
        Title of the probability panel.
    scaled_scores
        The values are scaled scores, not probabilities.
    traced
        ``(B,)`` index of the boxed client per input (default: the argmax).
    label_share
        ``(K, C)`` share of each label held by each client: drawn as a second
        panel (the paper's Fig. 1 view).
    class_labels
        ``C`` names of the label-share rows.
    images
        ``(B, H, W[, C])`` uint8 pictures of the inputs, drawn left of the rows.

    """
    probs = np.asarray(probs, dtype=float)
    b, k = probs.shape
    row_height = 0.17
    height = max(2.2, row_height * b + 1.1)
    panels = [1.0] if label_share is None else [1.0, 1.0]
    with figure_style():
        fig, axes = plt.subplots(
            1,
            len(panels),
            figsize=(
                TEXT_WIDTH if label_share is not None else COLUMN_WIDTH + 1.4,
                height,
            ),
            gridspec_kw={"width_ratios": panels, "wspace": 0.55},
            squeeze=False,
        )
        axes = list(axes[0])
        ax_p = axes[0]
        is_probability = not scaled_scores
        im = ax_p.imshow(
            probs,
            aspect="auto",
            cmap="viridis" if is_probability else "RdBu_r",
            vmin=0 if is_probability else -1,
            vmax=1,
        )
        boxed = probs.argmax(axis=1) if traced is None else np.asarray(traced)
        ax_p.scatter(
            boxed,
            np.arange(b),
            marker="s",
            s=40,
            facecolors="none",
            edgecolors="white" if is_probability else "black",
            linewidths=0.9,
            label="Top-ranked client",
        )
        label_axis = ax_p
        divider = make_axes_locatable(ax_p)
        if images is not None:
            # Square thumbnails left of the rows, carrying the row labels.
            label_axis = divider.append_axes("left", size=row_height, pad=0.03)
            mosaic = _stack_images(images)
            label_axis.imshow(
                mosaic,
                cmap="gray" if mosaic.ndim == 2 else None,
                extent=(0, 1, b - 0.5, -0.5),
                aspect="auto",
                interpolation="nearest",
            )
            label_axis.set_xticks([])
            label_axis.grid(False)
            for spine in label_axis.spines.values():
                spine.set_visible(False)
            ax_p.set_yticks(range(b), [""] * b)
        label_axis.set_yticks(range(b), list(row_labels))
        ax_p.set_xticks(range(k), list(client_labels), rotation=90 if k > 12 else 0)
        ax_p.grid(False)
        ax_p.set_xlabel("Client")
        ax_p.set_title(title)
        cbar = fig.colorbar(im, cax=divider.append_axes("right", size=0.1, pad=0.08))
        cbar.set_label(
            "Client probability" if is_probability else "Score / largest |score|"
        )
        if label_share is not None:
            ax_c = axes[1]
            im2 = ax_c.imshow(
                np.asarray(label_share, dtype=float).T,
                aspect="auto",
                cmap="magma",
                vmin=0,
                vmax=1,
            )
            c = label_share.shape[1]
            ax_c.set_xticks(range(k), list(client_labels), rotation=90 if k > 12 else 0)
            ax_c.set_yticks(range(c), list(class_labels or [str(i) for i in range(c)]))
            ax_c.grid(False)
            ax_c.set_xlabel("Client")
            ax_c.set_ylabel("Label")
            ax_c.set_title("Share of each label held by each client")
            cbar2 = fig.colorbar(
                im2,
                cax=make_axes_locatable(ax_c).append_axes("right", size=0.1, pad=0.08),
            )
            cbar2.set_label("Share of the label's samples")
        return fig


def plot_client_probabilities(
    probs: np.ndarray,
    row_labels: Sequence[str],
    client_labels: Sequence[str],
    stem: Path,
    *,
    title: str,
    scaled_scores: bool = False,
    traced: np.ndarray | None = None,
    label_share: np.ndarray | None = None,
    class_labels: Sequence[str] | None = None,
    images: np.ndarray | None = None,
) -> list[Path]:
    """Draw with :func:`draw_client_probabilities` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(
            draw_client_probabilities(
                probs,
                row_labels,
                client_labels,
                title=title,
                scaled_scores=scaled_scores,
                traced=traced,
                label_share=label_share,
                class_labels=class_labels,
                images=images,
            ),
            stem,
        )


def _stack_images(images: np.ndarray) -> np.ndarray:
    """``(B, H, W[, C])`` pictures stacked top to bottom into one image."""
    return np.concatenate(list(images), axis=0)


def plot_provenance_round(
    inputs: pd.DataFrame, clients: pd.DataFrame, server_round: int, stem: Path
) -> list[Path]:
    """Client probabilities per traced input beside the clients' label counts."""
    rows = inputs[inputs["round"] == server_round]
    held = clients[clients["round"] == server_round]
    if "status" in held:  # rejected, failed, timed-out clients hold no share
        held = held[held["status"] == "fused"]
    held = held.dropna(subset=["client"]).sort_values("client")
    client_ids = held["client"].astype(int).tolist()
    probs = rows[[f"prob_client-{c}" for c in client_ids]].to_numpy(dtype=float)
    label_cols = [c for c in held.columns if c.startswith("label_")]
    counts = held[label_cols].to_numpy(dtype=float)
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    return plot_client_probabilities(
        probs,
        [
            f"#{i} (y={t})"
            for i, t in zip(rows["input_index"], rows["true_label"], strict=True)
        ],
        [str(c) for c in client_ids],
        stem,
        title=f"Round {server_round}: TraceFL client probabilities",
        label_share=share,
        class_labels=[c.removeprefix("label_") for c in label_cols],
    )


def read_run_config(out_dir: Path) -> dict[str, Any]:
    """The ``config`` of a run's ``run.json`` (empty if there is none).

    ``num-clients = 0`` (the federation decides) becomes the number of
    partitions the run recorded.
    """
    path = Path(out_dir) / "run.json"
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    config = dict(info.get("config", {}))
    partitions = (info.get("federation") or {}).get("num_partitions")
    if not config.get("num-clients") and partitions:
        config["num-clients"] = int(partitions)
    return config


# ------------------------------------------------------------ per method

#: Line styles told apart in grey scale (curves; chance levels).
LINESTYLES = ("-", "--", "-.", ":")
CHANCE_STYLES = (":", "--", "-.")
#: Line style of each method in the per-method figure (others: by order).
METHOD_STYLES = {
    "paper": ("C0", "s"),
    "update": ("C1", "^"),
    "loo": ("C2", "D"),
    "cross-round": ("C3", "v"),
    "cross-round-unweighted": ("C4", "P"),
    "cumulative": ("C5", "X"),
    "fedinfluence": ("C6", "o"),
}


def draw_method_accuracy(methods: pd.DataFrame, title: str = "") -> plt.Figure:
    """Strict (or faulty-client) accuracy per method and round, with chance.

    ``methods`` is a run's ``methods.csv``. A method's chance level is that of
    a uniformly random client among those it ranks (a round's participants for
    per-round methods, every client seen for cross-round ones): one grey line
    per distinct chance curve, named after the methods it belongs to. Markers
    are dodged sideways by a few hundredths of a round so that methods with
    equal accuracy stay visible.
    """
    faulty = numeric_column(methods, "faulty_accuracy").notna().any()
    metric, chance, what = (
        ("faulty_accuracy", "faulty_random_baseline", "Faulty client found (%)")
        if faulty
        else ("strict_accuracy", "strict_random_baseline", "Strict accuracy (%)")
    )
    names = list(dict.fromkeys(methods["method"]))
    chance_by_round = methods.pivot_table(
        index="round", columns="method", values=chance
    )
    groups: dict[tuple[float, ...], list[str]] = {}
    for name in names:
        if name in chance_by_round:
            curve = tuple(np.round(chance_by_round[name].to_numpy(), 9))
            groups.setdefault(curve, []).append(name)
    with figure_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.4))
        for i, name in enumerate(names):
            rows = methods[methods["method"] == name].sort_values("round")
            color, marker = METHOD_STYLES.get(name, (f"C{(7 + i) % 10}", "o"))
            # Methods that agree would hide each other: dodge them sideways.
            dodge = (i - (len(names) - 1) / 2) * min(0.06, 0.3 / len(names))
            ax.plot(
                rows["round"] + dodge,
                100 * numeric_column(rows, metric),
                linestyle="-",
                marker=marker,
                markerfacecolor="white" if i % 2 else color,
                color=color,
                label=name,
            )
        for j, (curve, members) in enumerate(groups.items()):
            label = "Random client"
            if len(groups) > 1:
                label += f" ({', '.join(members)})"
            ax.plot(
                chance_by_round.index,
                100 * np.array(curve),
                linestyle=CHANCE_STYLES[j % len(CHANCE_STYLES)],
                color=str(0.25 + 0.25 * (j % 3)),
                label=label,
            )
        ax.set_xlabel("Round")
        ax.set_ylabel(what)
        ax.set_ylim(-2, 104)
        integer_rounds(ax, methods["round"])
        legend_below(ax, ncol=2)
        if title:
            ax.set_title(title)
        return fig


def plot_method_accuracy(
    methods: pd.DataFrame, stem: Path, title: str = ""
) -> list[Path]:
    """Draw with :func:`draw_method_accuracy` and save as ``stem.png``/``.pdf``."""
    with figure_style():
        return save_figure(draw_method_accuracy(methods, title), stem)


def plot_run(out_dir: Path) -> list[Path]:
    """Rebuild every figure of one run directory from its CSVs.

    ``methods.{png,pdf}`` when the run scored its methods (``methods.csv``);
    the per-input views when ``inputs.csv`` has the paper method's client
    probabilities.
    """
    out_dir = Path(out_dir)
    rounds = pd.read_csv(out_dir / "rounds.csv")
    config = read_run_config(out_dir)
    title = run_title(config) if config else ""
    paths = plot_accuracy(rounds, out_dir / "accuracy", title=title)
    methods_path = out_dir / "methods.csv"
    if methods_path.is_file():
        methods = pd.read_csv(methods_path)
        if len(methods):
            paths += plot_method_accuracy(methods, out_dir / "methods", title=title)
    inputs_path, clients_path = out_dir / "inputs.csv", out_dir / "clients.csv"
    if inputs_path.exists() and clients_path.exists():
        inputs = pd.read_csv(inputs_path)
        clients = pd.read_csv(clients_path)
        has_probs = any(c.startswith("prob_client-") for c in inputs.columns)
        for server_round in sorted(inputs["round"].unique()) if has_probs else []:
            paths += plot_provenance_round(
                inputs,
                clients,
                int(server_round),
                out_dir / f"provenance_round_{int(server_round)}",
            )
    return paths


def mark_not_applicable(ax: plt.Axes, x: float, label: str) -> None:
    """Write ``label`` upright at bar position ``x`` where a value does not apply."""
    ax.text(
        x, 1.5, label, ha="center", va="bottom", fontsize=6, rotation=90, color="0.35"
    )
