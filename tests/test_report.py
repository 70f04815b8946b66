"""Summaries and figures built from hand-written run directories."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tracefl.config import parse_run_config
from tracefl.plotting import (
    SMALL_FONT_SIZE,
    draw_accuracy,
    draw_client_probabilities,
    draw_method_accuracy,
    plot_run,
    read_run_config,
    run_title,
)
from tracefl.report import (
    ACCURACY_BARS,
    FAULTY_BARS,
    build_report,
    draw_bars,
    draw_round_curves,
    draw_times,
    latex_table,
    summarize_experiment,
)
from tracefl.report_tables import format_cell, markdown_table

ROUND_KEYS = (
    "round",
    "status",
    "num_participants",
    "num_traced",
    "test_accuracy",
    "paper_accuracy",
    "paper_random_baseline",
    "strict_accuracy",
    "strict_random_baseline",
    "strict_top3",
    "faulty_accuracy",
    "faulty_random_baseline",
    "feddebug_accuracy",
    "provenance_seconds",
    "provenance_seconds_per_input",
    "feddebug_seconds",
    "provenance_share",
)


def write_run(
    root: Path, name: str, config: dict, rounds: list[dict], status: str = "completed"
) -> Path:
    out = root / name
    out.mkdir(parents=True)
    cfg = parse_run_config({**config, "run-name": name}).to_run_config()
    (out / "run.json").write_text(json.dumps({"config": cfg, "status": status}))
    pd.DataFrame(rounds, columns=list(ROUND_KEYS)).to_csv(
        out / "rounds.csv", index=False
    )
    return out


def traced_rounds(n: int = 3, strict_random: float = 0.1, **extra: float) -> list[dict]:
    return [
        {
            "round": r,
            "status": "traced",
            "num_participants": 10,
            "num_traced": 4,
            "test_accuracy": 0.2 * r,
            "paper_accuracy": 1.0,
            "paper_random_baseline": 0.8,
            "strict_accuracy": 0.5,
            "strict_random_baseline": strict_random,
            "strict_top3": 0.9,
            "provenance_seconds": 0.01,
            "provenance_seconds_per_input": 0.0025,
            "provenance_share": 0.001,
            **extra,
        }
        for r in range(1, n + 1)
    ]


def rendered(fig: plt.Figure) -> plt.Figure:
    fig.canvas.draw()
    return fig


def legend_outside(ax: plt.Axes, legend) -> bool:
    box, area = legend.get_window_extent(), ax.get_window_extent()
    return box.y1 <= area.y0 + 1 or box.x0 >= area.x1 - 1


# ------------------------------------------------------------------ tables


def test_summary_files_hold_no_float_noise(tmp_path: Path) -> None:
    # mean(0.1, 0.1, 0.1) == 0.10000000000000002 in floating point.
    assert np.mean([0.1, 0.1, 0.1]) != 0.1
    write_run(tmp_path, "alpha-0.3", {"dirichlet-alpha": 0.3}, traced_rounds())
    write_run(tmp_path, "alpha-0.1", {"dirichlet-alpha": 0.1}, traced_rounds())
    write_run(tmp_path, "broken", {}, traced_rounds(), status="failed")
    frame = summarize_experiment(tmp_path)
    assert frame["run"].tolist() == ["alpha-0.1", "alpha-0.3"]  # failed run left out
    csv_text = (tmp_path / "summary.csv").read_text()
    assert "0.10000000000000002" not in csv_text
    assert re.search(r"\d\.\d{7,}", csv_text) is None
    assert frame["strict_random_baseline"].tolist() == [0.1, 0.1]
    tex = (tmp_path / "summary.tex").read_text()
    md = markdown_table(
        frame, ["run", "alpha", "strict_random_baseline", "paper_accuracy"]
    )
    for text in (tex, md):
        assert re.search(r"\d\.\d{4,}", text) is None, text
    assert "| alpha-0.1 | 0.1 | 10.0 | 100.0 |" in md
    assert "mnist & cnn & 0.1 & " in tex  # constant settings are left out
    assert tex.splitlines()[2].startswith("dataset & model & alpha & max test accuracy")


def test_cells_mark_not_applicable_apart_from_zero() -> None:
    assert format_cell("feddebug_accuracy", float("nan")) == "n/a"
    assert format_cell("feddebug_accuracy", "n/a") == "n/a"
    assert format_cell("feddebug_accuracy", 0.0) == "0.0"
    assert format_cell("strict_accuracy", 0.43333333333333335) == "43.3"
    assert format_cell("alpha", 0.30000000000000004) == "0.3"
    assert format_cell("enable_beta", True) == "on"
    assert format_cell("tracefl_seconds_per_round", 0.018450000000000001) == "0.0185"
    frame = pd.DataFrame({"feddebug_accuracy": [0.0, np.nan], "run": ["a", "b"]})
    tex = latex_table(frame.assign(dataset="mnist"))
    assert "0.0" in tex and "--" in tex


# ----------------------------------------------------------------- figures


def test_accuracy_figure_has_integer_rounds_outside_legend_and_a_real_title() -> None:
    rounds = pd.DataFrame(traced_rounds(n=6))
    cfg = parse_run_config({"dirichlet-alpha": 0.3, "num-clients": 10}).to_run_config()
    fig = rendered(draw_accuracy(rounds, title=run_title(cfg)))
    ax = fig.axes[0]
    ticks = ax.get_xticks()
    assert list(ticks) == [1, 2, 3, 4, 5, 6]
    assert legend_outside(ax, ax.get_legend())
    assert ax.get_title() == r"mnist, cnn, 10 clients, $\alpha$ = 0.3"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Random client, strict metric" in labels
    plt.close(fig)


def test_run_config_takes_the_federation_size(tmp_path: Path) -> None:
    """num-clients = 0 (the federation decides): run.json records the size."""
    cfg = parse_run_config({"dirichlet-alpha": 0.3}).to_run_config()
    assert cfg["num-clients"] == 0
    info = {"config": cfg, "federation": {"num_partitions": 7}}
    (tmp_path / "run.json").write_text(json.dumps(info))
    assert read_run_config(tmp_path)["num-clients"] == 7
    assert "7 clients" in run_title(read_run_config(tmp_path))
    assert "clients" not in run_title(cfg)  # unknown: not shown as "0 clients"


def method_rows(chance: dict[str, float], faulty: bool = False) -> pd.DataFrame:
    """``methods.csv`` of 3 rounds; accuracy = 0.1 * (method number + round)."""
    metric, baseline = (
        ("faulty_accuracy", "faulty_random_baseline")
        if faulty
        else ("strict_accuracy", "strict_random_baseline")
    )
    return pd.DataFrame(
        [
            {"round": r, "method": m, metric: 0.1 * (i + r), baseline: chance[m]}
            for r in (1, 2, 3)
            for i, m in enumerate(chance)
        ]
    )


def test_method_figure_shows_every_method_with_its_chance() -> None:
    frame = method_rows({"paper": 0.25, "update": 0.25, "cross-round": 0.1})
    fig = rendered(draw_method_accuracy(frame, title="run"))
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "paper",
        "update",
        "cross-round",
        "Random client (paper, update)",
        "Random client (cross-round)",
    ]
    assert legend_outside(ax, legend)
    assert list(ax.get_xticks()) == [1, 2, 3]
    assert ax.get_ylabel() == "Strict accuracy (%)"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for i, name in enumerate(("paper", "update", "cross-round")):
        assert lines[name].get_ydata() == pytest.approx(
            [10 * (i + r) for r in (1, 2, 3)]
        )
        offsets = np.asarray(lines[name].get_xdata()) - np.array([1, 2, 3])
        assert np.abs(offsets).max() <= 0.1  # dodged, still on its round
    xs = {tuple(lines[n].get_xdata()) for n in ("paper", "update", "cross-round")}
    assert len(xs) == 3  # equal accuracies would not hide each other
    assert lines["Random client (cross-round)"].get_ydata() == pytest.approx([10] * 3)
    plt.close(fig)
    shared = rendered(draw_method_accuracy(method_rows({"paper": 0.5, "loo": 0.5})))
    labels = [t.get_text() for t in shared.axes[0].get_legend().get_texts()]
    assert labels == ["paper", "loo", "Random client"]
    plt.close(shared)
    faulty = draw_method_accuracy(method_rows({"paper": 0.1}, faulty=True))
    assert faulty.axes[0].get_ylabel() == "Faulty client found (%)"
    plt.close(faulty)


def test_round_curves_sort_numerically_and_differ_in_style(tmp_path: Path) -> None:
    for n in (10, 100, 50):
        write_run(tmp_path, f"clients-{n}", {"num-clients": n}, traced_rounds(n=4))
    fig = rendered(
        draw_round_curves(
            tmp_path,
            (("paper_accuracy", "Paper"), ("strict_accuracy", "Strict")),
            "num-clients",
            "Fig. 5",
            "Clients",
        )
    )
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["10", "50", "100"]
    assert legend_outside(fig.axes[-1], legend)
    lines = fig.axes[0].get_lines()
    assert len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 3
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)


def test_bars_show_zero_and_not_applicable_differently() -> None:
    frame = pd.DataFrame(
        {
            "faulty_accuracy": [1.0, 0.9],
            "feddebug_accuracy": [0.0, np.nan],
            "faulty_random_baseline": [0.1, 0.1],
        }
    )
    fig = rendered(draw_bars(frame, ["a", "b"], "T", bars=FAULTY_BARS, annotate=True))
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n/a") == 1
    assert "0" in texts
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 5  # the n/a bar is not drawn
    assert 0.0 in heights
    assert legend_outside(ax, ax.get_legend())
    plt.close(fig)


def test_accuracy_bars_never_draw_missing_values_as_zero() -> None:
    frame = pd.DataFrame({c: [0.5] for c, *_ in ACCURACY_BARS}).assign(
        strict_accuracy=[np.nan]
    )
    fig = draw_bars(frame, ["run"], "T")
    assert [t.get_text() for t in fig.axes[0].texts] == ["n/a"]
    plt.close(fig)


def test_time_figure_uses_milliseconds_for_short_times() -> None:
    frame = pd.DataFrame(
        {
            "tracefl_seconds_per_round": [0.0185, 0.0125],
            "feddebug_seconds_per_round": [0.0146, np.nan],
        }
    )
    fig = rendered(draw_times(frame, [r"mnist, $\alpha$ = 0.3", "text"], "Fig. 6"))
    ax = fig.axes[0]
    assert ax.get_ylabel().endswith("(ms)")
    texts = [t.get_text() for t in ax.texts]
    assert "18.5" in texts and "n/a" in texts
    assert max(p.get_height() for p in ax.patches) == pytest.approx(18.5)
    plt.close(fig)


def test_per_input_view_fonts_are_readable() -> None:
    probs = np.full((30, 10), 0.1)
    share = np.full((10, 10), 0.1)
    fig = rendered(
        draw_client_probabilities(
            probs,
            [f"#{i}" for i in range(30)],
            [str(k) for k in range(10)],
            title="Round 1",
            label_share=share,
        )
    )
    for ax in fig.axes:
        for label in ax.get_yticklabels() + ax.get_xticklabels():
            if label.get_text():
                assert label.get_fontsize() >= SMALL_FONT_SIZE
    plt.close(fig)


# ----------------------------------------------------------- build_report


def write_inputs_and_clients(run: Path) -> None:
    pd.DataFrame(
        {
            "round": [1, 1],
            "input_index": [0, 1],
            "true_label": [0, 1],
            "prob_client-0": [0.7, 0.2],
            "prob_client-1": [0.3, 0.8],
        }
    ).to_csv(run / "inputs.csv", index=False)
    pd.DataFrame(
        {"round": [1, 1], "client": [0, 1], "label_0": [5, 1], "label_1": [0, 4]}
    ).to_csv(run / "clients.csv", index=False)


def test_build_report_rebuilds_runs_and_experiments(tmp_path: Path) -> None:
    exp = tmp_path / "ablation"
    for pk in (True, False):
        run = write_run(
            exp,
            f"pk-{'on' if pk else 'off'}",
            {"client-weights-normalization": pk},
            traced_rounds(n=1),
        )
        write_inputs_and_clients(run)
    written = build_report(exp)
    assert {p.name for p in written} >= {"summary.csv", "ablation.png", "ablation.pdf"}
    assert (exp / "pk-on" / "provenance_round_1.png").is_file()
    assert (exp / "pk-off" / "accuracy.png").is_file()
    assert {p.name for p in build_report(exp / "pk-on")} >= {"accuracy.png"}
    # experiment.json (written by the experiment runner) names the figure set.
    other = tmp_path / "my-sweep"
    write_run(other, "x", {}, traced_rounds(n=1))
    assert "localization.png" in {p.name for p in build_report(other)}
    (other / "experiment.json").write_text(json.dumps({"report": "fig2"}))
    assert "fig2_localization.png" in {p.name for p in build_report(other)}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a run"):
        build_report(tmp_path / "empty")


def test_run_report_with_methods_and_without_the_paper_method(tmp_path: Path) -> None:
    """methods.csv gives methods.png; no prob columns (paper off): no view."""
    run = write_run(tmp_path, "run", {}, traced_rounds(n=3))
    method_rows({"update": 0.5, "loo": 0.5}).to_csv(run / "methods.csv", index=False)
    pd.DataFrame(
        {"round": [1], "input_index": [0], "true_label": [0], "traced_update": [1]}
    ).to_csv(run / "inputs.csv", index=False)
    pd.DataFrame({"round": [1], "client": [0], "label_0": [3]}).to_csv(
        run / "clients.csv", index=False
    )
    names = {p.name for p in plot_run(run)}
    assert names == {"accuracy.png", "accuracy.pdf", "methods.png", "methods.pdf"}


def test_per_input_view_skips_clients_that_were_not_fused(tmp_path: Path) -> None:
    """clients.csv also lists rejected and timed-out nodes (no histogram)."""
    run = write_run(tmp_path, "run", {}, traced_rounds(n=1))
    write_inputs_and_clients(run)
    clients = pd.read_csv(run / "clients.csv").assign(status="fused")
    extra = pd.DataFrame(
        [
            {"round": 1, "client": 2, "status": "rejected"},
            {"round": 1, "status": "timed-out"},
        ]
    )
    pd.concat([clients, extra]).to_csv(run / "clients.csv", index=False)
    assert "provenance_round_1.png" in {p.name for p in plot_run(run)}
