"""The aggregator experiment's tables and figure, from hand-written run folders."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from tracefl.config import parse_run_config
from tracefl.report import build_report
from tracefl.report_aggregators import (
    aggregator_tables,
    draw_aggregators,
    faulty_shares,
)

FAULTY = {"faulty-clients": "0", "label-flip": "1:0"}


def write_run(
    exp: Path,
    name: str,
    config: dict,
    rounds: list[dict],
    methods: list[dict],
    clients: list[dict] | None = None,
) -> Path:
    """A completed run: run.json, rounds.csv, methods.csv and clients.csv."""
    out = exp / name
    out.mkdir(parents=True)
    cfg = parse_run_config({**config, "run-name": name}).to_run_config()
    (out / "run.json").write_text(json.dumps({"config": cfg, "status": "completed"}))
    pd.DataFrame(rounds).to_csv(out / "rounds.csv", index=False)
    pd.DataFrame(methods).to_csv(out / "methods.csv", index=False)
    pd.DataFrame(clients or [{"round": 1, "client": 0, "status": "fused"}]).to_csv(
        out / "clients.csv", index=False
    )
    return out


def rounds(statuses: list[str], accuracy: list[float]) -> list[dict]:
    return [
        {
            "round": r,
            "status": s,
            "num_participants": 3,
            "num_traced": 2 if s == "traced" else 0,
            "test_accuracy": a,
        }
        for r, (s, a) in enumerate(zip(statuses, accuracy, strict=True), start=1)
    ]


def clients(shares: list[list[float]], examples: tuple[int, ...]) -> list[dict]:
    """Three fused clients per round (client 0 is the faulty one) + a rejected one."""
    rows = []
    for r, per_client in enumerate(shares, start=1):
        for k, share in enumerate(per_client):
            rows.append(
                {
                    "round": r,
                    "client": k,
                    "status": "fused",
                    "num_examples": examples[k],
                    "fusion_share": share,
                }
            )
        rows.append({"round": r, "client": 3, "status": "rejected"})
    return rows


def faulty_methods(rows: dict[str, list[tuple[float, float]]]) -> list[dict]:
    """methods.csv of a faulty run: method -> [(faulty_accuracy, pseudo) per round]."""
    return [
        {
            "round": r,
            "method": m,
            "faulty_accuracy": acc,
            "faulty_random_baseline": 1 / 3,
            "pseudo_would_win": pseudo,
        }
        for m, per_round in rows.items()
        for r, (acc, pseudo) in enumerate(per_round, start=1)
    ]


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """fedavg (clean + faulty), krum (faulty only), fedadam (faulty, gain 3)."""
    exp = tmp_path / "aggregators"
    # Directory names sort against the aggregators' order on purpose.
    write_run(
        exp,
        "c-fedavg-clean",
        {"fusion": "fedavg"},
        rounds(["traced", "traced"], [0.5, 0.8]),
        [
            {
                "round": r,
                "method": m,
                "strict_accuracy": acc,
                "strict_random_baseline": 0.2,
                "paper_accuracy": 1.0,
                "paper_random_baseline": 0.9,
                "pseudo_would_win": 0.0,
            }
            for m, per_round in (("paper", (0.5, 0.7)), ("loo", (0.0, 1.0)))
            for r, acc in zip((1, 2), per_round, strict=True)
        ],
    )
    write_run(
        exp,
        "b-fedavg-faulty",
        {"fusion": "fedavg", **FAULTY},
        rounds(["traced", "no-eligible-inputs"], [0.4, 0.6]),
        faulty_methods({"paper": [(1.0, 0.0)], "loo": [(0.5, 0.0)]}),
        clients([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5]], (100, 100, 200)),
    )
    write_run(
        exp,
        "a-krum-faulty",
        {
            "fusion": "krum",
            "num-malicious-nodes": 1,
            "num-clients": 5,
            "min-train-nodes": 5,
            "min-available-nodes": 5,
            **FAULTY,
        },
        rounds(["traced", "traced"], [0.3, 0.2]),
        faulty_methods({"paper": [(0.0, 0.5), (1.0, 0.0)], "loo": [(0.0, 0.0)] * 2}),
        clients([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], (100, 100, 200)),
    )
    write_run(
        exp,
        "d-fedadam-faulty",
        {"fusion": "fedadam", **FAULTY},
        rounds(["traced"], [0.1]),
        faulty_methods({"paper": [(0.5, 1.0)], "loo": [(0.5, 0.0)]}),
        clients([[0.3, 0.3, 2.4]], (100, 100, 800)),
    )
    (exp / "experiment.json").write_text(json.dumps({"report": "aggregators"}))
    return exp


def test_faulty_share_is_relative_to_the_client_part(experiment: Path) -> None:
    # FedAdam's shares carry its gain (they sum to 3): 0.3 of 3 is 10 %.
    adam = faulty_shares(experiment / "d-fedadam-faulty")
    assert adam.to_dict("records") == [
        {"round": 1, "fusion_share": pytest.approx(0.1), "data_share": 0.1}
    ]
    krum = faulty_shares(experiment / "a-krum-faulty")
    assert krum["fusion_share"].tolist() == [0.0, 1.0]
    assert krum["data_share"].tolist() == [0.25, 0.25]


def test_tables_per_aggregator_and_method(experiment: Path) -> None:
    per_fusion, per_method = aggregator_tables(experiment)
    assert per_fusion["fusion"].tolist() == ["fedavg", "fedadam", "krum"]
    rows = per_fusion.set_index("fusion")
    assert rows.loc["fedavg", "clean_max_test_accuracy"] == 0.8
    assert rows.loc["fedavg", "faulty_final_test_accuracy"] == 0.6
    assert rows.loc["fedavg", "faulty_fusion_share"] == 0.25
    assert rows.loc["fedavg", "rounds_faulty_excluded"] == 0
    assert rows.loc["fedavg", "faulty_traced_rounds"] == 1
    assert rows.loc["fedavg", "faulty_inputs_traced"] == 2
    assert rows.loc["krum", "faulty_fusion_share"] == 0.5
    assert rows.loc["krum", "faulty_fusion_share_min"] == 0.0
    assert rows.loc["krum", "rounds_faulty_excluded"] == 1
    assert np.isnan(rows.loc["krum", "clean_max_test_accuracy"])  # no clean run
    m = per_method.set_index(["fusion", "method"])
    assert m.loc[("fedavg", "paper"), "strict_accuracy"] == pytest.approx(0.6)
    assert m.loc[("fedavg", "loo"), "strict_accuracy"] == pytest.approx(0.5)
    assert m.loc[("fedavg", "paper"), "strict_random_baseline"] == 0.2
    assert m.loc[("fedavg", "paper"), "clean_traced_rounds"] == 2
    assert m.loc[("fedavg", "paper"), "faulty_accuracy"] == 1.0
    assert m.loc[("fedavg", "paper"), "faulty_random_baseline"] == pytest.approx(1 / 3)
    assert m.loc[("krum", "paper"), "faulty_accuracy"] == 0.5
    assert m.loc[("krum", "paper"), "faulty_pseudo_would_win"] == 0.25
    assert m.loc[("krum", "paper"), "faulty_traced_rounds"] == 2
    assert m.loc[("krum", "paper"), "clean_traced_rounds"] == 0
    assert np.isnan(m.loc[("krum", "paper"), "strict_accuracy"])


def test_report_writes_tables_and_figure(experiment: Path) -> None:
    written = {p.name for p in build_report(experiment)}
    assert {"aggregators.png", "aggregators.pdf", "summary.csv"} <= written
    shares = pd.read_csv(experiment / "aggregator_shares.csv")
    assert shares.groupby("fusion")["round"].count().to_dict() == {
        "fedadam": 1,
        "fedavg": 2,
        "krum": 2,
    }
    methods = pd.read_csv(experiment / "aggregator_methods.csv")
    assert len(methods) == 6  # 3 aggregators x 2 methods
    tables = (experiment / "aggregators.md").read_text()
    # faulty: test accuracy, share (min-max), rounds excluded, traced, blamed, chance
    assert "| `krum` | n/a / 30 | 50 (0–100) | 1 of 2 | 2 (4) | 50 | 0 | 33 |" in tables
    assert "| `fedadam` | 100 / n/a | 0 / n/a |" in tables  # server wins: faulty/clean
    # clean: strict / paper metric per method, then their chance levels
    assert "| `fedavg` | 80 | 60 / 100 | 50 / 100 | 20 / 90 |" in tables


def cell_texts(ax: plt.Axes) -> dict[tuple[int, int], str]:
    return {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
        for t in ax.texts
    }


def test_figure_cells_show_values_chance_and_missing(experiment: Path) -> None:
    per_fusion, per_method = aggregator_tables(experiment)
    shares = pd.concat(
        faulty_shares(experiment / name).assign(fusion=fusion)
        for name, fusion in (
            ("b-fedavg-faulty", "fedavg"),
            ("d-fedadam-faulty", "fedadam"),
            ("a-krum-faulty", "krum"),
        )
    )
    fig = draw_aggregators(per_fusion, per_method, shares)
    share_ax, blamed_ax, pseudo_ax, strict_ax = fig.axes
    rows = [t.get_text() for t in share_ax.get_yticklabels()]
    assert rows == ["fedavg", "fedadam", "krum"]
    share = cell_texts(share_ax)  # (row, round index)
    assert share[(2, 0)] == "0" and share[(2, 1)] == "100"
    assert share[(1, 0)] == "10" and share[(1, 1)] == "n/a"  # fedadam: one round
    columns = [t.get_text() for t in blamed_ax.get_xticklabels()]
    assert columns == ["paper", "loo", "chance"]
    blamed = cell_texts(blamed_ax)
    assert blamed[(0, 0)] == "100" and blamed[(2, 0)] == "50"
    assert blamed[(2, 2)] == "33"  # chance: one faulty client of three
    assert cell_texts(pseudo_ax)[(2, 0)] == "25"
    strict = cell_texts(strict_ax)
    assert strict[(0, 0)] == "60" and strict[(0, 2)] == "20"
    assert strict[(2, 0)] == "n/a"  # krum has no clean run here
    plt.close(fig)


def test_two_runs_of_one_setting_are_refused(experiment: Path) -> None:
    write_run(
        experiment,
        "e-fedavg-faulty-again",
        {"fusion": "fedavg", **FAULTY},
        rounds(["traced"], [0.1]),
        faulty_methods({"paper": [(1.0, 0.0)]}),
    )
    with pytest.raises(ValueError, match="b-fedavg-faulty and e-fedavg-faulty-again"):
        aggregator_tables(experiment)
