"""The retraining ground truth (tooling.retraining) on a tiny in-process study.

Every run of the study's plan is executed by the in-process harness (the same
client training and server code as a Flower run), then the tables are checked
against literal recomputation from the kept models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.pipeline_harness import run_rounds
from tooling.retraining import StudyError, ground_truth, input_digest, load_study
from tooling.truth_comparison import compare, rowwise_spearman, tie_aware_top1
from tracefl.dataset import load_server_test
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.registry import run_dataset_spec

RUN_CONFIG = """
num-clients = 2
min-train-nodes = 1
min-available-nodes = 2
num-server-rounds = 2
local-epochs = 1
lr = 0.05
max-per-client-data-size = 120
max-server-data-size = 150
provenance-inputs-per-label = 1
methods = "loo"
fedinfluence = true
plots = false
"""
STUDY = """
run-config = "tiny.toml"
[scenarios.correct]
[variants.lwet-off]
fedinfluence-lwet = false
"""


def write_study(conf: Path, study: str = STUDY) -> None:
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "tiny.toml").write_text(RUN_CONFIG)
    (conf / "tiny.truth.toml").write_text(study)


def test_the_plan_changes_only_what_each_run_needs(tmp_path: Path) -> None:
    write_study(tmp_path)
    study = load_study("tiny", tmp_path)
    runs = {r.name: r.overrides for r in study.runs("correct")}
    assert list(runs) == ["reference", "fip-lwet-off", "without-0", "without-1"]
    assert runs["reference"]["fedinfluence-save-estimates"] is True
    assert runs["reference"]["keep-models-rounds"] == "all"
    assert runs["fip-lwet-off"]["fedinfluence-lwet"] is False
    assert runs["without-1"]["exclude-partitions"] == "1"
    training = ("seed", "lr", "local-epochs", "num-clients", "dirichlet-alpha")
    for name, overrides in runs.items():
        for key in training:
            assert overrides.get(key) == runs["reference"].get(key), (name, key)


@pytest.mark.parametrize(
    ("study", "message"),
    [
        (STUDY.replace("fedinfluence-lwet", "lr"), "may only change fedinfluence-"),
        (
            STUDY.replace("[scenarios.correct]", "[scenarios.x]\nfraction-train = 0.5"),
            "fraction-train = 1",
        ),
        (
            STUDY.replace("[variants.lwet-off]", "[variants.v]\nscenarios = ['nope']"),
            "names no scenario",
        ),
    ],
)
def test_a_bad_study_is_refused_with_the_reason(
    tmp_path: Path, study: str, message: str
) -> None:
    write_study(tmp_path, study)
    with pytest.raises(StudyError, match=message):
        load_study("tiny", tmp_path)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of the tiny study, in-process, with the run.json Flower writes."""
    from flwr.supercore.task_identity import TaskIdentity

    base = tmp_path_factory.mktemp("truth")
    write_study(base / "conf")
    study = load_study("tiny", base / "conf")
    runs_dir = base / "study" / "runs" / "correct"
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        for run in study.runs("correct"):
            out = runs_dir / run.name
            done = run_rounds(out, **{**run.overrides, "output-dir": str(out)})
            (out / "run.json").write_text(
                json.dumps({"status": "completed", "config": done.cfg.to_run_config()})
            )
    finally:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = previous
    return runs_dir


def literal_logits(model, state, x) -> torch.Tensor:
    model = model.double().eval()
    model.load_state_dict({k: v.double() for k, v in state.items()})
    with torch.no_grad():
        return model(x.double())


@pytest.fixture(scope="module")
def tables(tiny_study: Path) -> Path:
    out = tiny_study.parent.parent / "ground_truth" / "correct"
    assert ground_truth(tiny_study, out) is True
    return out


def test_truth_tables_match_a_literal_recomputation(
    tiny_study: Path, tables: Path
) -> None:
    out = tables
    checks = json.loads((out / "manifest.json").read_text())["checks"]
    # Round 1 of a retraining is the reference's round-1 leave-one-out.
    assert checks["round1_retrained_vs_round_loo_max_abs"] < 1e-6
    assert checks["variant_final_model_equals_reference"] == {"fip-lwet-off": True}
    effects = pd.read_csv(out / "effects.csv")
    inputs = pd.read_csv(tiny_study / "reference" / "inputs.csv")
    assert len(effects) == 2 * len(inputs)
    ref = ModelStore.open(tiny_study / "reference")
    cfg_model = build_model("cnn", run_dataset_spec("mnist", 28))
    from tracefl.config import parse_run_config

    cfg = parse_run_config(
        json.loads((tiny_study / "reference" / "run.json").read_text())["config"]
    )
    test = load_server_test(cfg)
    for r in (1, 2):
        rows = inputs[inputs["round"] == r]
        idx = torch.as_tensor(rows["input_index"].to_numpy().copy())
        pred = torch.as_tensor(rows["predicted_label"].to_numpy().copy())
        base = literal_logits(
            cfg_model, ref.load_round(r).aggregate, test.features[idx]
        )
        for k in (0, 1):
            other = ModelStore.open(tiny_study / f"without-{k}").load_round(r).aggregate
            logits = literal_logits(cfg_model, other, test.features[idx])
            got = effects[
                (effects["round"] == r) & (effects["client"] == f"client-{k}")
            ]
            got = got.set_index("input_index").loc[rows["input_index"]]
            d_logit = (
                logits.gather(1, pred[:, None])[:, 0]
                - base.gather(1, pred[:, None])[:, 0]
            )
            np.testing.assert_allclose(got["d_logit"], d_logit.numpy(), atol=1e-9)
            d_logprob = -(
                logits.log_softmax(1).gather(1, pred[:, None])[:, 0]
                - base.log_softmax(1).gather(1, pred[:, None])[:, 0]
            )
            np.testing.assert_allclose(got["d_logprob"], d_logprob.numpy(), atol=1e-9)
    fip = pd.read_csv(out / "estimates_fip.csv")
    first = fip[fip["round"] == 1].groupby("estimator")["err_norm"].max()
    # In round 1 the round's leave-one-out and Fed-Influence are exact.
    assert set(first.index) == {"round-loo", "fedinfluence", "fedinfluence-lwet-off"}
    assert (first < 1e-5).all()
    later = fip[fip["round"] == 2].groupby("estimator")["err_norm"].sum()
    assert (later > 1e-6).all()  # later rounds: estimates, not the truth
    tests = pd.read_csv(out / "test_effects.csv")
    assert len(tests) == 2 * 2 and tests["d_test_loss"].notna().all()


def test_tables_are_cached_until_an_input_changes(
    tiny_study: Path, tables: Path
) -> None:
    assert ground_truth(tiny_study, tables) is False
    manifest = json.loads((tables / "manifest.json").read_text())
    assert set(manifest["runs"]) == {
        "reference",
        "fip-lwet-off",
        "without-0",
        "without-1",
    }
    assert manifest["inputs_sha256"] == input_digest(tiny_study)
    inputs = tiny_study / "reference" / "inputs.csv"
    text = inputs.read_text()
    try:
        inputs.write_text(text + "\n")
        assert input_digest(tiny_study) != manifest["inputs_sha256"]
    finally:
        inputs.write_text(text)


def test_rowwise_spearman_and_top1_match_literal_definitions() -> None:
    from scipy.stats import spearmanr

    gen = np.random.default_rng(0)
    a = gen.normal(size=(20, 6))
    b = gen.normal(size=(20, 6))
    a[3, :3] = a[3, 0]  # ties
    got = rowwise_spearman(a, b)
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.isnan(rowwise_spearman(np.ones((1, 4)), b[:1, :4])).all()
    truth = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 1.0]])
    scores = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0]])  # tied best scores
    np.testing.assert_allclose(tie_aware_top1(scores, truth), [0.5, 0.5])
    np.testing.assert_allclose(tie_aware_top1(truth, truth), [1.0, 1.0])


def test_the_comparison_is_exact_where_the_truth_is_known(
    tiny_study: Path, tables: Path
) -> None:
    out = compare(tiny_study.parent.parent, copy_static=False)
    by_round = pd.read_csv(out / "by_round.csv").set_index(["method", "round"])
    # Round 1: retraining without k is the round's leave-one-out, so ``loo``
    # (log p of the prediction) and Fed-Influence (its logit) are the truth.
    assert by_round.loc[("loo", 1), "spearman_logprob"] == pytest.approx(1.0)
    assert by_round.loc[("loo", 1), "top1_logprob"] == pytest.approx(1.0)
    assert by_round.loc[("fedinfluence", 1), "spearman_logit"] == pytest.approx(1.0)
    assert by_round.loc[("retraining", 2), "top1_logprob"] == pytest.approx(1.0)
    check = pd.read_csv(out / "fedinfluence_check.csv").set_index(
        ["estimator", "round"]
    )
    assert check.loc[("fedinfluence", 1), "rel_error_all"] < 1e-5
    assert check.loc[("round-loo", 1), "cosine_all"] == pytest.approx(1.0)
    summary = (out / "summary.md").read_text()
    assert "app's fedinfluence scores vs. saved estimates, max |diff|: 0.00e+00" in (
        summary
    )
    assert (out / "fedinfluence_truth.png").stat().st_size > 10_000
