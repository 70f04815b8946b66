"""Backdoor mode, gaming clients and masked replies on real client training.

In-process through :mod:`tests.pipeline_harness` (the ServerApp's strategy and
analysis, TraceFL's own client training), so each test takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from tests.pipeline_harness import run_rounds
from tracefl.adversarial.setup import run_trigger
from tracefl.adversarial.trigger import poison_samples
from tracefl.config import METHOD_NAMES
from tracefl.dataset import client_partition, label_histogram, load_server_test
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.registry import run_dataset_spec
from tracefl.train import predict

pytestmark = pytest.mark.usefixtures("task_identity")

BACKDOOR = {
    "backdoor-clients": "1",
    "backdoor-target": 0,
    "backdoor-fraction": 0.5,
    "local-epochs": 2,
    "max-per-client-data-size": 200,
    "max-server-data-size": 200,
}


@pytest.fixture(scope="module")
def backdoor_run(tmp_path_factory: pytest.TempPathFactory):
    from flwr.supercore.task_identity import TaskIdentity

    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield run_rounds(tmp_path_factory.mktemp("backdoor"), **BACKDOOR)
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = previous


def test_backdoor_client_reports_its_poisoned_labels(backdoor_run) -> None:
    cfg = backdoor_run.cfg
    clients = pd.read_csv(backdoor_run.out_dir / "clients.csv")
    reported = clients[(clients["round"] == 1) & (clients["client"] == 1)]
    counts = reported[[f"label_{c}" for c in range(10)]].to_numpy()[0]
    # Oracle: the clean partition, poisoned as the client does it.
    idx, labels = client_partition(cfg, 1, 4)
    x = torch.zeros(len(idx), 1, 28, 28)
    _, poisoned, rows = poison_samples(
        x, torch.as_tensor(labels), run_trigger(cfg), 0, 0.5, seed=cfg.seed + 1
    )
    assert len(rows) == round(0.5 * len(idx))
    assert counts.tolist() == label_histogram(poisoned.numpy(), 10).tolist()
    assert counts[0] > label_histogram(labels, 10)[0]  # relabelled to the target
    honest = clients[(clients["round"] == 1) & (clients["client"] == 2)]
    _, clean = client_partition(cfg, 2, 4)
    honest_counts = honest[[f"label_{c}" for c in range(10)]].to_numpy()[0]
    assert honest_counts.tolist() == label_histogram(clean, 10).tolist()


def test_attack_success_is_measured_on_triggered_inputs(backdoor_run) -> None:
    cfg = backdoor_run.cfg
    rounds = pd.read_csv(backdoor_run.out_dir / "rounds.csv")
    test = load_server_test(cfg)
    others = (test.labels != 0).numpy()
    assert (rounds["triggered_inputs"] == int(others.sum())).all()
    # Recompute the last round's numbers from the final global model.
    model = build_model(cfg.model, run_dataset_spec(cfg.dataset, cfg.image_size))
    model.load_state_dict(backdoor_run.final_state)
    triggered = run_trigger(cfg).apply(test.features)
    from tracefl.dataset import LabeledTensors

    _, on_triggered = predict(
        model, LabeledTensors(triggered, test.labels), 64, torch.device("cpu")
    )
    _, on_clean = predict(model, test, 64, torch.device("cpu"))
    last = rounds.iloc[-1]
    assert last["attack_success_rate"] == pytest.approx(
        float((on_triggered.numpy()[others] == 0).mean()), abs=1e-6
    )
    assert last["attack_success_baseline"] == pytest.approx(
        float((on_clean.numpy()[others] == 0).mean()), abs=1e-6
    )
    assert last["test_accuracy"] == pytest.approx(
        float((on_clean == test.labels).float().mean()), abs=1e-6
    )


def test_every_method_localizes_the_backdoor_client_with_chance(backdoor_run) -> None:
    out = backdoor_run.out_dir
    rounds = pd.read_csv(out / "rounds.csv")
    assert (rounds["faulty_participants"].astype(str) == "1").all()
    traced = rounds[rounds["status"] == "traced"]
    assert len(traced) >= 1
    inputs = pd.read_csv(out / "inputs.csv")
    assert (inputs["mode"] == "backdoor").all()
    assert (inputs["predicted_label"] == 0).all()  # attack successes only
    assert (inputs["true_label"] != 0).all()
    methods = pd.read_csv(out / "methods.csv")
    assert set(methods["method"]) == set(METHOD_NAMES)
    for _, row in methods.iterrows():
        # Every method ranks the 4 clients; one of them is the backdoor client.
        assert row["faulty_random_baseline"] == pytest.approx(0.25)
        correct = inputs[inputs["round"] == row["round"]][f"traced_{row['method']}"]
        assert row["faulty_accuracy"] == pytest.approx(float((correct == 1).mean()))
    assert rounds["feddebug_suspects"].notna().all()


def test_gaming_client_sends_the_transformed_update(tmp_path: Path) -> None:
    """Same seeds, honest vs front-load (/2 from round 1): Delta halves exactly."""
    base = {
        "num-server-rounds": 1,
        "max-per-client-data-size": 100,
        "keep-models-rounds": "1",
        "gaming-clients": "2",
        "cross-round-queries-per-label": 1,
    }
    honest = run_rounds(tmp_path / "honest", **base)
    gamed = run_rounds(
        tmp_path / "gamed",
        **base,
        **{
            "gaming-strategy": "front-load",
            "gaming-strength": 2.0,
            "gaming-start-round": 1,
        },
    )
    a = ModelStore.open(honest.out_dir).load_round(1)
    b = ModelStore.open(gamed.out_dir).load_round(1)
    for k in range(4):
        for key in a.previous:
            delta_a = a.clients[k][key].double() - a.previous[key].double()
            delta_b = b.clients[k][key].double() - b.previous[key].double()
            factor = 0.5 if a.client_ids[k] == "client-2" else 1.0
            torch.testing.assert_close(delta_b, factor * delta_a, rtol=1e-5, atol=1e-6)


def test_a_masked_secaggplus_reply_is_rejected_and_explained(tmp_path: Path) -> None:
    def mask(rnd: int, pid: int, msg):
        if pid == 3:
            masked = ConfigRecord({"masked_params": [np.zeros(4, np.int64).tobytes()]})
            msg.content = RecordDict({RECORD_KEY_CONFIGS: masked})
        return msg

    run_rounds(
        tmp_path,
        tamper=mask,
        **{
            "num-server-rounds": 1,
            "min-train-nodes": 3,
            "max-per-client-data-size": 100,
        },
    )
    row = pd.read_csv(tmp_path / "rounds.csv").iloc[0]
    assert row["rejected"] == 1 and row["participants"] == "0;1;2"
    assert "node 103: the reply carries SecAgg+ masked records" in row["problems"]
    assert "per-client provenance is impossible" in row["problems"]
    assert row["status"] == "traced"  # the visible clients are still traced


def test_text_backdoor_runs_on_token_inputs(tmp_path: Path) -> None:
    """The dict-input path: poisoned token ids, triggered queries, text model."""
    from tests.fixtures import write_dbpedia14
    from tracefl.analysis.backdoor_step import triggered_test_set

    data_dir = write_dbpedia14(tmp_path / "data", train_per_class=12, test_per_class=6)
    run = run_rounds(
        tmp_path / "out",
        **{
            "dataset": "dbpedia_14",
            "model": "gpt2-tiny",
            "data-dir": str(data_dir),
            "num-server-rounds": 1,
            "optimizer": "adamw",
            "lr": 5e-4,
            "batch-size": 8,
            "max-seq-len": 32,
            "min-partition-size": 0,
            "backdoor-clients": "1",
            "backdoor-fraction": 1.0,
        },
    )
    test = load_server_test(run.cfg)
    triggered = triggered_test_set(run.cfg, test)
    token = run_trigger(run.cfg).token_id
    assert (triggered.features["input_ids"][:, 1] == token).all()
    assert (test.features["input_ids"][:, 1] != token).all()
    row = pd.read_csv(tmp_path / "out" / "rounds.csv").iloc[0]
    assert row["triggered_inputs"] == int((test.labels != 0).sum())
    assert 0 <= row["attack_success_rate"] <= 1
    clients = pd.read_csv(tmp_path / "out" / "clients.csv")
    poisoned = clients[clients["client"] == 1]
    assert (poisoned[[f"label_{c}" for c in range(1, 14)]] == 0).all(axis=None)
    # One round teaches no trigger yet (no triggered input is predicted as 0), so
    # nothing is selected; the cross-round methods still observed the round on
    # the triggered token queries (ObserveRound runs on every aggregate).
    assert row["status"] in ("traced", "no-eligible-inputs")
