"""The server side on real client training, in-process (see pipeline_harness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.pipeline_harness import nan_model, run_rounds
from tracefl.analysis.recorder import METHOD_COLUMNS
from tracefl.analysis.summary import method_summary
from tracefl.config import METHOD_NAMES
from tracefl.reply import ARRAYS

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory):
    from flwr.supercore.task_identity import TaskIdentity

    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield run_rounds(tmp_path_factory.mktemp("full"))
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = previous


def test_every_method_is_recorded_side_by_side(full_run) -> None:
    out = full_run.out_dir
    methods = pd.read_csv(out / "methods.csv")
    assert list(methods.columns) == list(METHOD_COLUMNS)
    assert sorted(set(methods["method"])) == sorted(METHOD_NAMES)
    assert methods.groupby("round")["method"].count().tolist() == [6, 6]
    rounds = pd.read_csv(out / "rounds.csv")
    assert (rounds["status"] == "traced").all()
    inputs = pd.read_csv(out / "inputs.csv")
    for m in METHOD_NAMES:
        assert inputs[f"traced_{m}"].between(0, 3).all()
    # The headline columns are the paper method's answer.
    assert (inputs["traced_client"] == inputs["traced_paper"]).all()
    paper = methods[methods["method"] == "paper"].set_index("round")
    np.testing.assert_allclose(
        paper["strict_accuracy"], rounds.set_index("round")["strict_accuracy"]
    )


def test_scores_table_is_complete_and_consistent(full_run) -> None:
    out = full_run.out_dir
    scores = pd.read_csv(out / "scores.csv")
    inputs = pd.read_csv(out / "inputs.csv")
    paper = scores[scores["method"] == "paper"]
    sums = paper.groupby(["round", "input_index"])["probability"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)
    assert len(sums) == len(inputs)
    # The traced client of every method is the argmax of its client scores.
    for method in METHOD_NAMES:
        rows = scores[
            (scores["method"] == method) & scores["client"].str.startswith("client-")
        ]
        best = rows.loc[rows.groupby(["round", "input_index"])["score"].idxmax()]
        traced = best.set_index(["round", "input_index"])["client"].str[7:].astype(int)
        expected = inputs.set_index(["round", "input_index"])[f"traced_{method}"]
        assert traced.sort_index().tolist() == expected.sort_index().tolist(), method


def test_traced_inputs_come_from_the_fixed_query_set(full_run) -> None:
    inputs = pd.read_csv(full_run.out_dir / "inputs.csv")
    labels = inputs["true_label"]
    # 3 queries per label: the first three test inputs of each label.
    assert inputs.groupby("round")["input_index"].count().max() <= 10
    assert (labels == inputs["predicted_label"]).all()


def test_run_summary_has_every_method_with_chance(full_run) -> None:
    summary = method_summary(full_run.recorder, faulty_mode=False)
    for m in METHOD_NAMES:
        entry = summary[m]
        assert entry["traced_rounds"] == 2
        assert 0 <= entry["strict_accuracy"] <= 1
        assert entry["strict_random_baseline"] == pytest.approx(0.25, abs=0.2)
        assert entry["per_input"]["cells"] >= 2


def test_cross_round_state_survives_partial_participation(tmp_path: Path) -> None:
    run = run_rounds(
        tmp_path,
        **{"num-server-rounds": 3, "fraction-train": 0.5, "min-train-nodes": 2},
    )
    methods = pd.read_csv(tmp_path / "methods.csv")
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert (rounds["num_participants"] == 2).all()
    seen = methods[methods["method"] == "cross-round-unweighted"]["num_clients"]
    per_round = methods[methods["method"] == "paper"]["num_clients"]
    assert (per_round == 2).all()
    assert seen.is_monotonic_increasing and seen.iloc[-1] > 2  # clients ever seen
    assert run.cfg.fraction_train == 0.5


def test_a_nan_reply_is_excluded_and_named(tmp_path: Path) -> None:
    def poison(rnd: int, pid: int, msg):
        if pid == 2 and rnd == 1:
            msg.content[ARRAYS] = nan_model(msg.content[ARRAYS])
        return msg

    run_rounds(tmp_path, tamper=poison, **{"min-train-nodes": 3})
    rounds = pd.read_csv(tmp_path / "rounds.csv").set_index("round")
    assert rounds.loc[1, "rejected"] == 1 and rounds.loc[2, "rejected"] == 0
    assert "client 2 (node 102)" in rounds.loc[1, "problems"]
    assert "non-finite" in rounds.loc[1, "problems"]
    assert rounds.loc[1, "participants"] == "0;1;3"
    assert (rounds["status"] == "traced").all()
    assert np.isfinite(rounds["test_loss"]).all()  # the federation was not poisoned
    clients = pd.read_csv(tmp_path / "clients.csv")
    bad = clients[(clients["round"] == 1) & (clients["status"] == "rejected")]
    assert bad["client"].tolist() == [2]


def test_too_few_valid_replies_fail_the_round(tmp_path: Path) -> None:
    def poison(rnd: int, pid: int, msg):
        if rnd == 2 and pid > 0:
            msg.content[ARRAYS] = nan_model(msg.content[ARRAYS])
        return msg

    run_rounds(tmp_path, tamper=poison)
    rounds = pd.read_csv(tmp_path / "rounds.csv").set_index("round")
    assert rounds.loc[1, "status"] == "traced"
    assert rounds.loc[2, "status"] == "failed"
    assert "1 valid replies of 4 sampled clients" in rounds.loc[2, "failure"]
    assert pd.isna(rounds.loc[2, "test_accuracy"])


def test_cumulative_store_reconstructs_the_final_model_with_dp(tmp_path: Path) -> None:
    from tracefl.attribution import CumulativeUpdates

    run = run_rounds(
        tmp_path,
        **{"num-server-rounds": 3, "clipping-norm": 5.0, "noise-multiplier": 0.01},
    )
    suite_dir = tmp_path / "cumulative"
    assert run.recorder.round_rows[-1]["unexplained_share"] > 1e-6  # the noise
    store = CumulativeUpdates.load(suite_dir)
    theta = store.reconstruct()
    final = run.final_state
    for key, value in theta.items():
        torch.testing.assert_close(value, final[key].double(), rtol=0, atol=1e-9)
    assert "noise" in store.pseudo_ids


def test_krum_selection_is_visible_in_shares_and_answers(tmp_path: Path) -> None:
    run_rounds(
        tmp_path,
        **{
            "num-clients": 5,
            "min-train-nodes": 5,
            "min-available-nodes": 5,
            "num-server-rounds": 1,
            "fusion": "krum",
            "num-malicious-nodes": 1,
            "methods": "paper,update,loo",
        },
    )
    clients = pd.read_csv(tmp_path / "clients.csv")
    shares = clients.set_index("client")["fusion_share"]
    assert sorted(shares.tolist()) == [0.0, 0.0, 0.0, 0.0, 1.0]
    chosen = int(shares.idxmax())
    inputs = pd.read_csv(tmp_path / "inputs.csv")
    # Every method built on the shares answers with the client Krum kept.
    for method in ("paper", "update", "loo"):
        assert (inputs[f"traced_{method}"] == chosen).all(), method


def test_fedavg_shares_are_the_data_shares(full_run) -> None:
    clients = pd.read_csv(full_run.out_dir / "clients.csv")
    for _, rows in clients.groupby("round"):
        expected = rows["num_examples"] / rows["num_examples"].sum()
        np.testing.assert_allclose(rows["fusion_share"], expected, atol=1e-6)


def test_rounds_record_the_traced_layer_set_and_untraced_share(full_run) -> None:
    rounds = pd.read_csv(full_run.out_dir / "rounds.csv")
    assert (rounds["layer_set"] == "all").all()
    # LeNet: every parameter sits in a Linear or Conv2d layer: nothing untraced.
    assert (rounds["untraced_share"] == 0).all()
    methods = pd.read_csv(full_run.out_dir / "methods.csv")
    engine_based = methods[methods["method"].isin(["paper", "update", "cumulative"])]
    assert engine_based["untraced_share"].notna().all()
