"""``exclude-partitions`` (the retraining counterfactual) and saved FIP estimates.

The server side runs in-process on real client training (tests/pipeline_harness).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fedinfluence_fixtures import assert_scores_are_the_saved_fip
from tests.pipeline_harness import run_rounds
from tracefl.config import ConfigError, parse_run_config
from tracefl.dataset import load_server_test
from tracefl.fedinfluence_estimates import load_estimates
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.registry import run_dataset_spec

pytestmark = pytest.mark.usefixtures("task_identity")

QUIET = {"provenance": False, "feddebug": False}
KEEP = {"keep-models-rounds": "all", "keep-final-model": True}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exclude-partitions": "a"}, "comma-separated partition ids"),
        ({"exclude-partitions": "1,1"}, "must not repeat"),
        ({"exclude-partitions": "4", "num-clients": 4}, "must be in 0..3"),
        (
            {"exclude-partitions": "0,1,2", "num-clients": 4, "min-train-nodes": 2},
            "leaves 1 of 4 clients, fewer than min-train-nodes = 2",
        ),
        ({"fedinfluence-save-estimates": True}, "needs fedinfluence=true"),
    ],
)
def test_bad_ground_truth_keys_name_the_key(overrides, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_run_config(overrides)


def test_excluded_partitions_parse_sorted() -> None:
    cfg = parse_run_config({"exclude-partitions": " 3, 0 "})
    assert cfg.excluded_partitions == (0, 3)
    assert parse_run_config({}).excluded_partitions == ()


def globals_by_round(out: Path) -> dict[int, dict[str, torch.Tensor]]:
    store = ModelStore.open(out)
    return {r: store.load_round(r).aggregate for r in store.rounds()}


@pytest.fixture(scope="module")
def reference_and_retrained(tmp_path_factory: pytest.TempPathFactory):
    """A reference run and two same-seed retrainings without client 1.

    The retrainings also run Fed-Influence (saving its estimates) and trace with
    ``loo``; the reference does neither, so equal client models also show that
    neither changes training.
    """
    from flwr.supercore.task_identity import TaskIdentity

    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    base = tmp_path_factory.mktemp("exclude")
    common = {
        **KEEP,
        "num-clients": 3,
        "min-train-nodes": 2,
        "min-available-nodes": 3,
        "methods": "loo",
    }
    retrain = {
        **common,
        "exclude-partitions": "1",
        "fedinfluence": True,
        "fedinfluence-save-estimates": True,
    }
    try:
        runs = {
            "reference": run_rounds(base / "reference", **common, **QUIET),
            "a": run_rounds(base / "a", **retrain),
            "b": run_rounds(base / "b", **retrain),
        }
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = previous
    return runs


def test_two_retrainings_with_the_same_seed_give_identical_models(
    reference_and_retrained,
) -> None:
    a = globals_by_round(reference_and_retrained["a"].out_dir)
    b = globals_by_round(reference_and_retrained["b"].out_dir)
    assert sorted(a) == [1, 2]
    for r in a:
        for key in a[r]:
            assert torch.equal(a[r][key], b[r][key]), (r, key)
    final_a = ModelStore.open(reference_and_retrained["a"].out_dir).load_final()
    final_b = ModelStore.open(reference_and_retrained["b"].out_dir).load_final()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def test_an_excluded_client_trains_but_never_reaches_the_aggregate(
    reference_and_retrained,
) -> None:
    ref = ModelStore.open(reference_and_retrained["reference"].out_dir).load_round(1)
    run = ModelStore.open(reference_and_retrained["a"].out_dir).load_round(1)
    assert ref.client_ids == ("client-0", "client-1", "client-2")
    assert run.client_ids == ("client-0", "client-2")
    # Round 1 starts from the same model: the others trained exactly as before.
    kept = [0, 2]
    for j, k in enumerate(kept):
        for key, value in run.clients[j].items():
            assert torch.equal(value, ref.clients[k][key]), (k, key)
    # ... and the aggregate is FedAvg over them alone (literal formula).
    n = np.array([ref.num_examples[k] for k in kept], dtype=np.float64)
    for key, value in run.aggregate.items():
        expected = sum(
            w * ref.clients[k][key].double()
            for w, k in zip(n / n.sum(), kept, strict=True)
        )
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    out = reference_and_retrained["a"].out_dir
    clients = pd.read_csv(out / "clients.csv")
    excluded = clients[clients["status"] == "excluded"]
    assert excluded["round"].tolist() == [1, 2]
    assert (excluded["client"] == 1).all()
    assert excluded["reason"].str.contains("excluded by exclude-partitions").all()
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds["participants"].tolist() == ["0;2", "0;2"]
    assert (rounds["rejected"] == 0).all() and (rounds["failed"] == 0).all()
    assert (rounds["status"] == "traced").all()
    # The second round differs from the reference's (the counterfactual is real).
    ref2 = globals_by_round(reference_and_retrained["reference"].out_dir)[2]
    run2 = globals_by_round(out)[2]
    assert any(not torch.equal(ref2[k], run2[k]) for k in ref2)


def test_saved_estimates_reproduce_the_fedinfluence_scores(
    reference_and_retrained,
) -> None:
    run = reference_and_retrained["a"]
    out, cfg = run.out_dir, run.cfg
    model = build_model(cfg.model, run_dataset_spec(cfg.dataset, cfg.image_size))
    scores = pd.read_csv(out / "scores.csv")
    scores = scores[scores["method"] == "fedinfluence"]
    inputs = pd.read_csv(out / "inputs.csv")
    test = load_server_test(cfg)
    store = ModelStore.open(out)
    for r in (1, 2):
        saved = load_estimates(out, r)
        assert saved.server_round == r
        assert saved.client_ids == ("client-0", "client-2")  # 1 never took part
        assert saved.layers == ("classifier.5",) and saved.lwet
        assert saved.tracked == ("classifier.5.weight", "classifier.5.bias")
        w_t = store.load_round(r).aggregate
        assert set(saved.fip["client-0"]) == set(w_t)
        assert_scores_are_the_saved_fip(
            model,
            w_t,
            saved,
            test,
            scores[scores["round"] == r],
            inputs[inputs["round"] == r],
        )
    rounds = pd.read_csv(out / "rounds.csv")
    assert (rounds["fedinfluence_payload_bytes_total"] > 0).all()
