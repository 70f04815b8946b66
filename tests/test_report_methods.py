"""The method comparison (issue 14) on hand-made run folders with known answers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from tracefl.config import parse_run_config
from tracefl.method_comparison import (
    ComparisonError,
    compare_methods,
    input_metrics,
    markdown_table,
)
from tracefl.report import FIGURES, experiment_figure_set
from tracefl.report_methods import draw_method_comparison, methods_figures

#: Label histograms (3 clients x 3 labels). Label 0: client 0 holds 9 vs 3
#: (decisive); label 1: client 1 holds 6 vs 5 (not decisive); label 2: client
#: 2 holds 8 vs 2 (decisive).
COUNTS = {0: [9, 1, 0], 1: [3, 6, 2], 2: [1, 5, 8]}
#: Traced inputs of every round: test index -> label (two of label 0: one cell).
INPUTS = {10: 0, 11: 0, 12: 1, 13: 2}
#: seed -> round -> method -> traced client of each input (order of INPUTS).
TRACED = {
    1: {
        1: {"paper": [0, 0, 2, 2], "loo": [0, 0, 1, 2]},
        2: {"paper": [1, 0, 1, 2], "loo": [0, 0, 1, 2]},
    },
    2: {
        1: {"paper": [0, 0, 1, 2], "loo": [0, 0, 1, 2]},
        2: {"paper": [0, 0, 1, 0], "loo": [0, 1, 1, 2]},
    },
}
#: Round 1 far below the best round: only round 2 is converged.
TEST_ACCURACY = {1: 0.5, 2: 0.9}
CONFIG = {"num-clients": 3, "dirichlet-alpha": 0.3, "num-server-rounds": 2}


def client_scores(traced: int, clients: list[int]) -> dict[int, float]:
    """The traced client first; the others by decreasing partition id."""
    others = sorted((c for c in clients if c != traced), reverse=True)
    return {c: float(len(clients) - r) for r, c in enumerate([traced, *others])}


def write_run(
    root: Path,
    name: str,
    seed: int,
    traced: dict[int, dict[str, list[int]]],
    *,
    config: dict | None = None,
    participants: dict[int, list[int]] | None = None,
    faulty: set[int] = frozenset(),
) -> Path:
    """A completed run folder as the ServerApp writes it (the files read here)."""
    out = root / name
    out.mkdir(parents=True)
    cfg = parse_run_config(
        {**CONFIG, **(config or {}), "seed": seed, "run-name": name}
    ).to_run_config()
    (out / "run.json").write_text(json.dumps({"config": cfg, "status": "completed"}))
    rounds, clients, inputs, scores, methods = [], [], [], [], []
    for server_round, by_method in traced.items():
        fused = (participants or {}).get(server_round, sorted(COUNTS))
        rounds.append(
            {
                "round": server_round,
                "status": "traced",
                "num_participants": len(fused),
                "num_traced": len(INPUTS),
                "test_accuracy": TEST_ACCURACY[server_round],
            }
        )
        for c in fused:
            clients.append(
                {
                    "round": server_round,
                    "client": c,
                    "status": "fused",
                    **{f"label_{j}": n for j, n in enumerate(COUNTS[c])},
                }
            )
        rows = {
            i: {
                "round": server_round,
                "mode": "faulty" if faulty else "correct",
                "input_index": i,
                "true_label": label,
                "predicted_label": label,
            }
            for i, label in INPUTS.items()
        }
        for method, picks in by_method.items():
            ranked = sorted(COUNTS) if method.startswith("cross") else fused
            for (i, label), pick in zip(INPUTS.items(), picks, strict=True):
                held = {c: COUNTS[c][label] for c in ranked}
                correct = pick in faulty if faulty else held[pick] == max(held.values())
                rows[i][f"traced_{method}"] = pick
                rows[i][f"correct_{method}"] = correct
                for c, s in client_scores(pick, ranked).items():
                    scores.append(
                        {
                            "round": server_round,
                            "method": method,
                            "input_index": i,
                            "client": f"client-{c}",
                            "score": s,
                        }
                    )
                # A pseudo-client outscoring everyone: reported, never ranked.
                scores.append(
                    {
                        "round": server_round,
                        "method": method,
                        "input_index": i,
                        "client": "server",
                        "score": 99.0,
                    }
                )
            methods.append(
                {
                    "round": server_round,
                    "method": method,
                    "strict_accuracy": 0.5,
                    "strict_random_baseline": 0.1,
                    "seconds": 0.25 * server_round,
                }
            )
        inputs += rows.values()
    for file, table in (
        ("rounds.csv", rounds),
        ("clients.csv", clients),
        ("inputs.csv", inputs),
        ("scores.csv", scores),
        ("methods.csv", methods),
    ):
        pd.DataFrame(table).to_csv(out / file, index=False)
    return out


def two_seeds(root: Path) -> list[Path]:
    return [write_run(root, f"seed-{s}", s, TRACED[s]) for s in (1, 2)]


def cells(seed_rounds: dict[tuple[int, int], list[float | None]]) -> list[float]:
    """Literal oracle: one value per (seed, round, label) cell, inputs averaged."""
    out = []
    for _cell, values in sorted(seed_rounds.items()):
        by_label: dict[int, list[float]] = {}
        for label, value in zip(INPUTS.values(), values, strict=True):
            if value is not None:
                by_label.setdefault(label, []).append(value)
        out += [sum(v) / len(v) for _, v in sorted(by_label.items())]
    return out


def t_interval(values: list[float]) -> tuple[float, float, float]:
    mean = sum(values) / len(values)
    half = (
        student_t.ppf(0.975, len(values) - 1)
        * statistics.stdev(values)
        / len(values) ** 0.5
    )
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def best(label: int) -> int:
    held = [COUNTS[c][label] for c in sorted(COUNTS)]
    return held.index(max(held))


def test_strict_accuracy_counts_seed_round_label_cells(tmp_path: Path) -> None:
    summary = compare_methods(two_seeds(tmp_path)).set_index("method")
    strict = {
        (s, r): [
            float(t == best(lab)) for t, lab in zip(p, INPUTS.values(), strict=True)
        ]
        for s, rounds in TRACED.items()
        for r, by_method in rounds.items()
        for p in [by_method["paper"]]
    }
    values = cells(strict)
    assert len(values) == 12  # 2 seeds x 2 rounds x 3 labels, not 16 inputs
    mean, low, high = t_interval(values)
    row = summary.loc["paper"]
    assert row["cells"] == 12 and row["inputs"] == 16 and row["seeds"] == 2
    assert row["strict"] == pytest.approx(mean)
    assert (row["strict_low"], row["strict_high"]) == pytest.approx((low, high))
    assert row["strict_chance"] == pytest.approx(1 / 3)
    assert summary.loc["loo", "strict"] == pytest.approx(
        np.mean([1, 1, 1] * 3 + [0.5, 1, 1])
    )


def test_converged_rounds_are_reported_apart(tmp_path: Path) -> None:
    summary = compare_methods(two_seeds(tmp_path)).set_index("method")
    late = {
        (s, 2): [
            float(t == best(lab)) for t, lab in zip(p, INPUTS.values(), strict=True)
        ]
        for s in (1, 2)
        for p in [TRACED[s][2]["paper"]]
    }
    early = {
        (s, 1): [
            float(t == best(lab)) for t, lab in zip(p, INPUTS.values(), strict=True)
        ]
        for s in (1, 2)
        for p in [TRACED[s][1]["paper"]]
    }
    row = summary.loc["paper"]
    assert row["converged_rounds"] == pytest.approx(0.5)  # round 2 of each seed
    assert row["strict_converged"] == pytest.approx(np.mean(cells(late)))
    assert row["strict_early"] == pytest.approx(np.mean(cells(early)))
    assert row["strict_early"] != row["strict_converged"]


def test_decisive_graded_spearman_and_loo_agreement(tmp_path: Path) -> None:
    summary = compare_methods(two_seeds(tmp_path)).set_index("method")
    row = summary.loc["paper"]
    assert row["decisive_share"] == pytest.approx(3 / 4)  # labels 0, 0, 2 of 4
    decisive = {
        (s, r): [
            float(t == best(lab)) if lab != 1 else None
            for t, lab in zip(by_method["paper"], INPUTS.values(), strict=True)
        ]
        for s, rounds in TRACED.items()
        for r, by_method in rounds.items()
    }
    assert row["decisive_strict"] == pytest.approx(np.mean(cells(decisive)))
    assert row["decisive_chance"] == pytest.approx(1 / 3)

    def graded(t: int, lab: int) -> float:
        return COUNTS[t][lab] / max(COUNTS[c][lab] for c in COUNTS)

    graded_cells = {
        (s, r): [
            graded(t, lab) for t, lab in zip(m["paper"], INPUTS.values(), strict=True)
        ]
        for s, rounds in TRACED.items()
        for r, m in rounds.items()
    }
    assert row["graded"] == pytest.approx(np.mean(cells(graded_cells)))
    chance = {
        lab: np.mean([COUNTS[c][lab] for c in COUNTS])
        / max(COUNTS[c][lab] for c in COUNTS)
        for lab in range(3)
    }
    assert row["graded_chance"] == pytest.approx(
        np.mean([chance[0], chance[1], chance[2]])
    )
    agree = {
        (s, r): [float(a == b) for a, b in zip(m["paper"], m["loo"], strict=True)]
        for s, rounds in TRACED.items()
        for r, m in rounds.items()
    }
    assert row["loo_agreement"] == pytest.approx(np.mean(cells(agree)))
    assert summary.loc["loo", "loo_agreement"] == 1.0

    # Spearman over 3 clients: 1 - 6 sum d^2 / (3 * 8), scores as written.
    def rho(t: int, lab: int) -> float:
        scores = client_scores(t, [0, 1, 2])
        rank_s = {c: r for r, c in enumerate(sorted(scores, key=scores.get))}
        held = {c: COUNTS[c][lab] for c in COUNTS}
        rank_n = {c: r for r, c in enumerate(sorted(held, key=held.get))}
        return 1 - 6 * sum((rank_s[c] - rank_n[c]) ** 2 for c in COUNTS) / 24

    rho_cells = {
        (s, r): [
            rho(t, lab) for t, lab in zip(m["paper"], INPUTS.values(), strict=True)
        ]
        for s, rounds in TRACED.items()
        for r, m in rounds.items()
    }
    assert row["spearman"] == pytest.approx(np.mean(cells(rho_cells)))


def test_each_method_is_scored_against_the_clients_it_ranks(tmp_path: Path) -> None:
    """Round 2's 2 participants for ``paper``, all 3 seen so far for ``cross-round``."""
    traced = {
        1: {"paper": [0, 0, 1, 2], "cross-round": [0, 0, 1, 2]},
        2: {"paper": [0, 0, 1, 1], "cross-round": [0, 0, 1, 1]},
    }
    run = write_run(tmp_path, "partial", 1, traced, participants={2: [0, 1]})
    frame = input_metrics(run)
    late = frame[frame["round"] == 2].set_index("method")
    # Label 2 (last input): client 1 (2 samples) is the best of the
    # participants {0, 1}, client 2 (8, reported in round 1) of all seen.
    assert late.loc["paper", "strict"].tolist() == [1, 1, 1, 1]
    assert late.loc["cross-round", "strict"].tolist() == [1, 1, 1, 0]
    assert late.loc["paper", "strict_chance"].tolist() == [0.5] * 4
    assert late.loc["cross-round", "strict_chance"].tolist() == pytest.approx(
        [1 / 3] * 4
    )
    assert late.loc["paper", "num_ranked"].tolist() == [2] * 4
    assert late.loc["cross-round", "num_ranked"].tolist() == [3] * 4
    # The same scores restricted to round 2's participants: traced by argmax.
    restricted = late.loc["cross-round (round's clients)"]
    assert restricted["strict"].tolist() == [1, 1, 1, 1]
    assert restricted["strict_chance"].tolist() == [0.5] * 4
    assert restricted["num_ranked"].tolist() == [2] * 4
    assert set(frame[frame["round"] == 1]["method"]) == {"paper", "cross-round"}
    assert not frame["method"].str.startswith("paper (").any()


def test_faulty_mode_counts_the_faulty_client(tmp_path: Path) -> None:
    traced = {
        1: {"paper": [0, 1, 0, 0], "loo": [0, 0, 0, 0]},
        2: {"paper": [0, 0, 0, 2], "loo": [0, 0, 0, 0]},
    }
    faulty_cfg = {**CONFIG, "faulty-clients": "0", "label-flip": "1:0,2:0"}
    runs = [
        write_run(tmp_path, f"f-{s}", s, traced, config=faulty_cfg, faulty={0})
        for s in (1, 2)
    ]
    row = compare_methods(runs).set_index("method").loc["paper"]
    hits = {
        (s, r): [float(t == 0) for t in traced[r]["paper"]]
        for s in (1, 2)
        for r in (1, 2)
    }
    assert row["faulty"] == pytest.approx(np.mean(cells(hits)))
    assert row["faulty_chance"] == pytest.approx(1 / 3)
    assert np.isnan(row["strict"])
    table = markdown_table(compare_methods(runs))
    assert "faulty client found" in table and "| strict %" not in table


def test_rebuilt_ground_truth_must_match_the_run(tmp_path: Path) -> None:
    run = write_run(tmp_path, "seed-1", 1, TRACED[1])
    inputs = pd.read_csv(run / "inputs.csv")
    inputs.loc[
        (inputs["round"] == 2) & (inputs["input_index"] == 10), "correct_paper"
    ] = True
    inputs.to_csv(run / "inputs.csv", index=False)
    with pytest.raises(ComparisonError, match=r"seed-1, round 2, method paper.*\[10\]"):
        input_metrics(run)


def test_seeds_group_into_settings(tmp_path: Path) -> None:
    runs = two_seeds(tmp_path)
    other = {**CONFIG, "dirichlet-alpha": 1.0}
    runs.append(write_run(tmp_path, "alpha-1", 1, TRACED[1], config=other))
    summary = compare_methods(runs)
    assert list(dict.fromkeys(summary["setting"])) == [
        "cnn, α=0.3, 3/3 clients",
        "cnn, α=1, 3/3 clients",
    ]
    assert summary.groupby("setting")["seeds"].first().tolist() == [2, 1]
    one_seed = summary[summary["seeds"] == 1]
    assert one_seed["seconds_per_round"].tolist() == [0.375, 0.375]


def test_cross_round_cost_is_its_accumulated_cost_per_round(tmp_path: Path) -> None:
    traced = {r: {"paper": [0, 0, 1, 2], "cross-round": [0, 0, 1, 2]} for r in (1, 2)}
    run = write_run(tmp_path, "seed-1", 1, traced)
    # write_run records 0.25 s x round: cumulative for cross-round (0.25, 0.5).
    summary = compare_methods([run]).set_index("method")
    assert summary.loc["paper", "seconds_per_round"] == pytest.approx(0.375)
    assert summary.loc["cross-round", "seconds_per_round"] == pytest.approx(0.25)


def test_figure_has_a_panel_per_metric_with_intervals_and_chance(
    tmp_path: Path,
) -> None:
    summary = compare_methods(two_seeds(tmp_path))
    fig = draw_method_comparison(summary, "title")
    try:
        shown = [ax for ax in fig.axes if ax.get_visible()]
        assert len(shown) == 6
        strict_ax = shown[0]
        heights = sorted(round(p.get_height(), 6) for p in strict_ax.patches)
        expected = sorted(round(100 * v, 6) for v in summary["strict"])
        assert heights == expected
        ticks = np.concatenate(
            [
                c.get_segments()
                for c in strict_ax.collections
                if c.get_label() == "_chance"
            ]
        )
        levels = sorted(round(100 * v, 6) for v in summary["strict_chance"])
        assert sorted(round(seg[0][1], 6) for seg in ticks) == levels
        decisive_ax = shown[2]
        assert "75% dec." in decisive_ax.get_xticklabels()[0].get_text()
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == [
            "paper",
            "loo",
            "chance (random client)",
        ]
    finally:
        plt.close(fig)


def test_report_writes_the_comparison_of_an_experiment(tmp_path: Path) -> None:
    exp = tmp_path / "methods"
    two_seeds(exp)
    (exp / "experiment.json").write_text(json.dumps({"report": "methods"}))
    assert experiment_figure_set(exp) == "methods"
    assert FIGURES["methods"] is methods_figures
    written = methods_figures(exp, pd.DataFrame())
    assert [p.name for p in written] == [
        "methods_summary.csv",
        "methods_summary.md",
        "methods.png",
        "methods.pdf",
    ]
    assert all(p.stat().st_size > 0 for p in written)
    table = pd.read_csv(exp / "methods_summary.csv")
    assert table["method"].tolist() == ["paper", "loo"]
    md = (exp / "methods_summary.md").read_text()
    row = table.set_index("method").loc["paper"]
    assert f"{100 * row['strict']:.0f} [{100 * row['strict_low']:.0f}, 100]" in md
