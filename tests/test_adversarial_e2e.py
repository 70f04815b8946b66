"""Backdoor and gaming settings end to end through Flower's simulation engine.

One private SuperLink serves every run of this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tooling.flower_local import LocalSuperLink
from tracefl.config import METHOD_NAMES
from tracefl.report_adversarial import backdoor_table, gaming_shift

pytestmark = pytest.mark.e2e

TINY = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "local-epochs": 2,
    "lr": 0.05,
    "max-per-client-data-size": 200,
    "max-server-data-size": 200,
    "cross-round-queries-per-label": 2,
}


@pytest.fixture(scope="module")
def link() -> Iterator[LocalSuperLink]:
    with LocalSuperLink() as superlink:
        yield superlink


def run(link: LocalSuperLink, out: Path, **overrides: object) -> int:
    config = {**TINY, "output-dir": str(out), **overrides}
    with (out.parent / f"{out.name}.log").open("w") as log:
        return link.run_app(config, num_supernodes=3, stdout=log, timeout=600)


def log_tail(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text()[-4000:]


def test_backdoor_setting(link: LocalSuperLink, tmp_path: Path) -> None:
    out = tmp_path / "backdoor"
    rc = run(link, out, **{"backdoor-clients": "1", "backdoor-fraction": 0.5})
    assert rc == 0, log_tail(out)
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "completed"
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["attack_success_rate"].between(0, 1).all()
    assert rounds["attack_success_baseline"].between(0, 1).all()
    assert (rounds["triggered_inputs"] > 0).all()
    traced = rounds[rounds["status"] == "traced"]
    assert len(traced) >= 1, rounds[["round", "status"]]
    table = backdoor_table(out).set_index("method")
    for method in METHOD_NAMES:
        assert 0 <= table.loc[method, "localization"] <= 1
        assert table.loc[method, "chance"] == pytest.approx(1 / 3)
    assert {"feddebug", "label-count"} <= set(table.index)
    assert "faulty_accuracy" in info["methods"]["loo"]  # the run.json summary
    inputs = pd.read_csv(out / "inputs.csv")
    assert (inputs["mode"] == "backdoor").all()
    assert (out / "accuracy.png").is_file()


def test_gaming_setting_against_an_honest_run(
    link: LocalSuperLink, tmp_path: Path
) -> None:
    common = {"num-server-rounds": 1, "gaming-clients": "2"}
    honest, gamed = tmp_path / "honest", tmp_path / "sharpen"
    assert run(link, honest, **common) == 0, log_tail(honest)
    rc = run(
        link,
        gamed,
        **common,
        **{
            "gaming-strategy": "sharpen",
            "gaming-strength": 1.0,
            "gaming-start-round": 1,
        },
    )
    assert rc == 0, log_tail(gamed)
    shift = gaming_shift(honest, gamed).set_index("method")
    assert set(shift.index) == set(METHOD_NAMES)
    np.testing.assert_allclose(shift["chance_share"], 1 / 3)
    assert shift["gamed_rank"].between(1, 3).all()
    # The gamer's model really differs: the runs share seeds but not the aggregate.
    a = pd.read_csv(honest / "rounds.csv").iloc[0]
    b = pd.read_csv(gamed / "rounds.csv").iloc[0]
    assert a["train_loss"] == pytest.approx(b["train_loss"])  # same honest training
    assert a["test_loss"] != pytest.approx(b["test_loss"])


def test_secure_aggregation_is_refused_before_training(
    link: LocalSuperLink, tmp_path: Path
) -> None:
    out = tmp_path / "secagg"
    assert run(link, out, **{"secure-aggregation": "secaggplus"}) != 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed"
    assert "per-client provenance is impossible" in info["reason"]
    assert not (out / "rounds.csv").exists()  # nothing was trained
