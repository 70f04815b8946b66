"""Fed-Influence and the retraining counterfactual through Flower's simulation engine.

A reference run with Fed-Influence on (3 clients, 2 rounds), two same-seed
retrainings without client 2, and the bad Fed-Influence settings, which must
fail before any training through either the config or the server's check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fedinfluence_fixtures import assert_scores_are_the_saved_fip
from tooling.flower_local import LocalSuperLink, main
from tracefl.fedinfluence_estimates import load_estimates
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.registry import run_dataset_spec

pytestmark = pytest.mark.e2e

TINY = {
    "num-clients": 3,
    "min-train-nodes": 2,
    "min-available-nodes": 3,
    "num-server-rounds": 2,
    "local-epochs": 1,
    "lr": 0.05,
    "max-per-client-data-size": 200,
    "max-server-data-size": 200,
    "provenance-inputs-per-label": 1,
    "methods": "paper,loo",
    "keep-models-rounds": "all",
    "keep-final-model": True,
    "plots": False,
}
REFERENCE = {"fedinfluence": True, "fedinfluence-save-estimates": True}
WITHOUT_2 = {"exclude-partitions": "2", "provenance": False, "feddebug": False}
#: LeNet on MNIST: floating state entries, and those of its last Linear (tracked).
STATE_ENTRIES, TRACKED_ENTRIES = 61706, 850


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    logs = tmp_path_factory.mktemp("superlink")
    with LocalSuperLink(log_dir=logs) as superlink:
        yield superlink


def run(link: LocalSuperLink, out: Path, **overrides: object) -> int:
    config = {**TINY, "output-dir": str(out), **overrides}
    with (out.parent / f"{out.name}.log").open("w") as handle:
        return link.run_app(config, num_supernodes=3, stdout=handle, timeout=600)


@pytest.fixture(scope="module")
def runs(link: LocalSuperLink, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fedinfluence-e2e")
    for name, overrides in (
        ("reference", REFERENCE),
        ("without-a", WITHOUT_2),
        ("without-b", WITHOUT_2),
    ):
        rc = run(link, base / name, **overrides)
        assert rc == 0, (base / f"{name}.log").read_text()[-4000:]
    return base


def expected_payload_bytes(num_examples: int, batch_size: int, samples: int) -> int:
    """``4 S p + 8 (m + 6)``: ``S = sum_i min(N_s, |batch_i|)`` over one epoch."""
    sizes = [batch_size] * (num_examples // batch_size)
    if num_examples % batch_size:
        sizes.append(num_examples % batch_size)
    rows = sum(min(samples, b) for b in sizes)
    return 4 * rows * TRACKED_ENTRIES + 8 * (len(sizes) + 6)


def test_round_records_report_fedinfluence_cost(runs: Path) -> None:
    out = runs / "reference"
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    rounds = pd.read_csv(out / "rounds.csv")
    clients = pd.read_csv(out / "clients.csv")
    assert (rounds["status"] == "traced").all()
    for _, row in rounds.iterrows():
        sizes = clients[clients["round"] == row["round"]]["num_examples"]
        payloads = [expected_payload_bytes(int(n), 32, 16) for n in sizes]
        assert row["fedinfluence_payload_bytes_total"] == sum(payloads)
        assert row["fedinfluence_payload_bytes_max"] == max(payloads)
        # 3 float64 estimators over the whole state plus the float32 aggregate.
        assert row["fedinfluence_state_bytes"] == (3 * 8 + 4) * STATE_ENTRIES
        assert row["fedinfluence_peak_bytes"] > row["fedinfluence_state_bytes"]
        assert row["fedinfluence_client_seconds_total"] > 0
        assert (
            row["fedinfluence_client_seconds_max"]
            <= (row["fedinfluence_client_seconds_total"])
        )
        assert math.isfinite(row["fedinfluence_server_seconds"])
        assert 0 <= row["fedinfluence_truncated_blocks"] <= 3 * 2


def test_fedinfluence_is_scored_beside_the_other_methods(runs: Path) -> None:
    out = runs / "reference"
    methods = pd.read_csv(out / "methods.csv")
    assert (
        methods.groupby("round")["method"].apply(list).tolist()
        == [["paper", "loo", "fedinfluence"]] * 2
    )
    rows = methods.set_index(["round", "method"])
    for r in (1, 2):
        fil = rows.loc[(r, "fedinfluence")]
        assert fil["num_clients"] == 3
        assert fil["num_traced"] == rows.loc[(r, "paper"), "num_traced"] > 0
        assert 0 <= fil["strict_accuracy"] <= 1
        assert (
            fil["strict_random_baseline"]
            == rows.loc[(r, "paper"), ("strict_random_baseline")]
        )
    summary = json.loads((out / "run.json").read_text())["methods"]
    assert summary["fedinfluence"]["traced_rounds"] == 2
    # Its scores are -(change of the predicted logit) at w_t + eps (saved FIP).
    cfg_model = build_model("cnn", run_dataset_spec("mnist", 28))
    scores = pd.read_csv(out / "scores.csv")
    scores = scores[scores["method"] == "fedinfluence"]
    inputs = pd.read_csv(out / "inputs.csv")
    from tracefl.config import parse_run_config
    from tracefl.dataset import load_server_test

    test = load_server_test(parse_run_config({**TINY, **REFERENCE}))
    store = ModelStore.open(out)
    for r in (1, 2):
        saved = load_estimates(out, r)
        assert saved.client_ids == ("client-0", "client-1", "client-2")
        w_t = store.load_round(r).aggregate
        responsibility = assert_scores_are_the_saved_fip(
            cfg_model,
            w_t,
            saved,
            test,
            scores[scores["round"] == r],
            inputs[inputs["round"] == r],
        )
        traced = inputs[inputs["round"] == r]["traced_fedinfluence"].to_numpy()
        assert (traced == responsibility.argmax(1).numpy()).all()


def round_globals(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    store = ModelStore.open(out)
    return {r: store.load_round(r).aggregate for r in store.rounds()}


def test_two_retrainings_with_the_same_seed_give_identical_models(runs: Path) -> None:
    a, b = round_globals(runs / "without-a"), round_globals(runs / "without-b")
    assert sorted(a) == sorted(b) == [1, 2]
    for r in a:
        for key in a[r]:
            assert torch.equal(a[r][key], b[r][key]), (r, key)
    fa = ModelStore.open(runs / "without-a").load_final()
    fb = ModelStore.open(runs / "without-b").load_final()
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_a_retraining_drops_the_client_as_if_it_never_took_part(runs: Path) -> None:
    ref = ModelStore.open(runs / "reference").load_round(1)
    without = ModelStore.open(runs / "without-a").load_round(1)
    assert without.client_ids == ("client-0", "client-1")
    # The same client training as the reference (which ran Fed-Influence's
    # sampler: it changes no training), and FedAvg over the two alone.
    for j in (0, 1):
        for key, value in without.clients[j].items():
            assert torch.equal(value, ref.clients[j][key]), (j, key)
    n = np.array(ref.num_examples[:2], dtype=np.float64)
    for key, value in without.aggregate.items():
        expected = (
            n[0] * ref.clients[0][key].double() + n[1] * (ref.clients[1][key].double())
        ) / n.sum()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    clients = pd.read_csv(runs / "without-a" / "clients.csv")
    excluded = clients[clients["status"] == "excluded"]
    assert excluded["round"].tolist() == [1, 2]
    assert (excluded["client"] == 2).all()
    rounds = pd.read_csv(runs / "without-a" / "rounds.csv")
    assert rounds["participants"].tolist() == ["0;1", "0;1"]
    assert (rounds["status"] == "not-traced").all()


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (  # the config path: refused by parse_run_config in the ServerApp
            {"fedinfluence-samples": 0},
            ["invalid run config", "fedinfluence-samples", "must be >= 1"],
        ),
        (  # the server's check on the model, before the first round
            {"fedinfluence-layers": "classifier.9"},
            ["ConfigError", "fedinfluence-layers", "no module 'classifier.9'"],
        ),
        (
            {"fedinfluence-memory-budget-mb": 0.5},
            ["ConfigError", "fedinfluence-memory-budget-mb = 0.5", "too small"],
        ),
    ],
    ids=["samples", "layer", "budget"],
)
def test_bad_settings_fail_before_training(
    link: LocalSuperLink, tmp_path: Path, overrides: dict, names: list[str]
) -> None:
    out = tmp_path / "bad"
    rc = run(link, out, **{"fedinfluence": True, **overrides})
    assert rc != 0
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "failed"
    for text in names:
        assert text in info["reason"], info["reason"]
    assert not (out / "rounds.csv").exists()  # no round was recorded
    log = (tmp_path / "bad.log").read_text()
    assert "[ROUND 1" not in log  # no round started


def test_the_launcher_refuses_bad_config_before_starting_anything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(
        [
            "-c",
            "fedinfluence=true",
            "-c",
            "fedinfluence-samples=0",
            "-c",
            f"output-dir='{tmp_path}'",
        ]
    )
    assert rc == 2
    assert "fedinfluence-samples" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
