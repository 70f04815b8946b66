"""``tracefl explain``: a hand-made case with a known answer, and saved real models."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tracefl.attribution import METHODS, CumulativeUpdates, FusedRound
from tracefl.cli import main
from tracefl.config import parse_run_config
from tracefl.dataset import load_client_data, load_server_test
from tracefl.explain import (
    ClientFiles,
    ExplainError,
    ExplainOptions,
    InputBatch,
    RoundModels,
    explain_cumulative,
    explain_round,
    method_option_names,
)
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.provenance import NeuronProvenance
from tracefl.registry import run_dataset_spec
from tracefl.train import TrainSettings, train

REPO = Path(__file__).resolve().parent.parent


def tiny_linear() -> nn.Module:
    """The architecture of the hand-made case (``--architecture``)."""
    return nn.Linear(2, 2, bias=False)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------- known answer


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    """Global 0.5*I, client a = I, client b = 0; inputs e_0 and 2*e_1.

    One linear layer, no bias: c = dy/d(out) is one-hot at the predicted class,
    so client k's score is (W_k x)[pred]: a gets x[pred], b gets 0. Hence
    without p_k the probabilities are sigmoid(1) and sigmoid(2); with
    n = (1, 3), p = (0.25, 0.75): sigmoid(0.25) and sigmoid(0.5).
    """
    save_file({"weight": 0.5 * torch.eye(2)}, tmp_path / "global.safetensors")
    save_file({"weight": torch.eye(2)}, tmp_path / "a.safetensors")
    torch.save({"weight": torch.zeros(2, 2)}, tmp_path / "b.pt")
    save_file(
        {
            "inputs": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
            "labels": torch.tensor([0, 1]),
        },
        tmp_path / "x.safetensors",
    )
    return tmp_path


def explain_hand_made(root: Path, *extra: str) -> pd.DataFrame:
    rc = main(
        [
            "explain",
            "--architecture",
            "tests.test_cli:tiny_linear",
            "--global",
            str(root / "global.safetensors"),
            "--clients",
            str(root / "a.safetensors"),
            str(root / "b.pt"),
            "--tensors",
            str(root / "x.safetensors"),
            "--out",
            str(root / "out"),
            "-q",
            *extra,
        ]
    )
    assert rc == 0
    return pd.read_csv(root / "out" / "ranking.csv")


def test_known_answer_without_data_share(hand_made: Path) -> None:
    ranking = explain_hand_made(hand_made, "--no-pk")
    top = ranking[ranking["rank"] == 1]
    assert top["client_id"].tolist() == ["a", "a"]
    assert top["predicted_label"].tolist() == [0, 1]
    assert top["probability"].tolist() == pytest.approx([sigmoid(1.0), sigmoid(2.0)])
    b = ranking[ranking["client_id"] == "b"]
    assert b["score"].tolist() == [0.0, 0.0]
    assert b["rank"].tolist() == [2, 2]
    data = json.loads((hand_made / "out" / "explanation.json").read_text())
    assert data["method"] == "paper" and data["has_probabilities"]
    # Loose files: the residual of their weighted average (here 0) is reported.
    assert data["pseudo_clients"] == ["server"]
    assert ranking.query("client_id == 'server'")["score"].tolist() == [0.0, 0.0]
    assert data["inputs"][1]["ranking"][0] == {
        "client_id": "a",
        "probability": pytest.approx(sigmoid(2.0)),
        "score": pytest.approx(2.0),
    }
    assert (hand_made / "out" / "explanation.png").stat().st_size > 0


def test_known_answer_with_data_share_and_ids(hand_made: Path) -> None:
    ranking = explain_hand_made(
        hand_made, "--client-weights", "1,3", "--client-ids", "alice,bob"
    )
    top = ranking[ranking["rank"] == 1]
    assert top["client_id"].tolist() == ["alice", "alice"]
    assert top["probability"].tolist() == pytest.approx([sigmoid(0.25), sigmoid(0.5)])
    (hand_made / "w.json").write_text(json.dumps({"alice": 1, "bob": 3}))
    again = explain_hand_made(
        hand_made,
        "--client-weights",
        str(hand_made / "w.json"),
        "--client-ids",
        "alice,bob",
    )
    pd.testing.assert_frame_equal(again, ranking)


def test_python_api_gives_the_same_answer() -> None:
    model = tiny_linear()
    model.load_state_dict({"weight": 0.5 * torch.eye(2)})
    clients = ClientFiles(
        ("a", "b"), ({"weight": torch.eye(2)}, {"weight": torch.zeros(2, 2)}), (1, 3)
    )
    models = RoundModels.from_files(model, clients)
    inputs = InputBatch(torch.tensor([[1.0, 0.0]]), ("x",), torch.tensor([0]))
    options = ExplainOptions(method_options={"scale_by_data_share": True})
    result = explain_round(model, models, inputs, options)
    assert float(result.result.probs[0, 0]) == pytest.approx(sigmoid(0.25))
    # The residual 0.5 I - 0.25 I of the files' weighted average is the server.
    assert result.result.column_ids == ("a", "b", "server")
    assert float(result.result.column("server")[0]) == pytest.approx(0.25)
    with pytest.raises(ExplainError, match="--method 'nope': known methods are"):
        explain_round(model, models, inputs, ExplainOptions(method="nope"))
    with pytest.raises(ExplainError, match="method 'loo' has no option 'layers'"):
        explain_round(
            model,
            models,
            inputs,
            ExplainOptions(method="loo", method_options={"layers": "all"}),
        )
    with pytest.raises(ExplainError, match="--method update reads each client's"):
        explain_round(model, models, inputs, ExplainOptions(method="update"))
    with pytest.raises(ExplainError, match="explain_cumulative"):
        explain_round(model, models, inputs, ExplainOptions(method="cumulative"))
    for name in ("cross-round", "cross-round-unweighted"):
        with pytest.raises(ExplainError, match="scores.csv"):
            explain_round(model, models, inputs, ExplainOptions(method=name))
    no_labels = InputBatch(torch.tensor([[1.0, 0.0]]), ("x",))
    with pytest.raises(ExplainError, match="--target true: the inputs carry no labels"):
        explain_round(model, models, no_labels, ExplainOptions(target="true"))


def test_every_registry_method_is_offered_and_placed() -> None:
    """No second registry: --method lists METHODS; each is run or refused."""
    from tracefl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    method = next(a for a in sub.choices["explain"]._actions if a.dest == "method")
    assert list(method.choices) == list(METHODS)
    runnable = []
    for name, spec in METHODS.items():
        if spec.state == "online":
            with pytest.raises(ExplainError, match="scores.csv"):
                method_option_names(name)
        else:
            assert "objective" in method_option_names(name) or name == "paper"
            runnable.append(name)
    assert runnable == ["paper", "update", "loo", "cumulative"]


def log_softmax_gain(logits: list[float], target: int) -> float:
    """``1 - softmax(z)[target]``: d log p(target) / d z_target."""
    z = torch.tensor(logits, dtype=torch.float64)
    return float(1 - torch.softmax(z, 0)[target])


def log_p(logits: list[float], target: int) -> float:
    z = torch.tensor(logits, dtype=torch.float64)
    return float(torch.log_softmax(z, 0)[target])


def test_known_answers_of_update_and_leave_one_out(hand_made: Path) -> None:
    """theta_{t-1} = 0, a = I, b = 0, n = (1, 3), global 0.5 I.

    update: s_k = <d log p/dW, p_k Delta_k>; d log p/dW = (e_t - softmax) x^T,
    so s_a = 0.25 * x[t] * (1 - softmax_t) and s_b = 0; the server's update
    0.5 I - 0.25 I scores the same as a but is never ranked.
    loo (FedAvg, residual r = 0.25 I kept): without a the model is
    r + b = 0.25 I, without b it is r + a = 1.25 I.
    """
    save_file({"weight": torch.zeros(2, 2)}, hand_made / "prev.safetensors")
    previous = ["--previous", str(hand_made / "prev.safetensors")]
    weights = ["--client-weights", "1,3"]
    update = explain_hand_made(hand_made, "--method", "update", *weights, *previous)
    score = update.set_index(["input", "client_id"])["score"]
    gains = [log_softmax_gain([0.5, 0.0], 0), log_softmax_gain([0.0, 1.0], 1)]
    for b, x_t in ((0, 1.0), (1, 2.0)):
        assert score[(b, "a")] == pytest.approx(0.25 * x_t * gains[b], rel=1e-6)
        assert score[(b, "b")] == 0.0
        assert score[(b, "server")] == pytest.approx(score[(b, "a")], rel=1e-6)
    assert update["probability"].isna().all()  # scores, no softmax
    assert update[update["client_id"] == "server"]["rank"].isna().all()
    assert update.query("rank == 1")["client_id"].tolist() == ["a", "a"]

    loo = explain_hand_made(hand_made, "--method", "loo", *weights)  # no theta_{t-1}
    score = loo.set_index(["input", "client_id"])["score"]
    for b, (x, t) in enumerate((((1.0, 0.0), 0), ((0.0, 2.0), 1))):
        full = log_p([0.5 * x[0], 0.5 * x[1]], t)
        assert score[(b, "a")] == pytest.approx(
            full - log_p([0.25 * x[0], 0.25 * x[1]], t), rel=1e-6
        )
        assert score[(b, "b")] == pytest.approx(
            full - log_p([1.25 * x[0], 1.25 * x[1]], t), rel=1e-6
        )
    assert set(loo["client_id"]) == {"a", "b"}  # loo has no pseudo-clients
    assert loo.query("rank == 1")["client_id"].tolist() == ["a", "a"]


def test_pseudo_clients_are_reported_never_ranked(hand_made: Path) -> None:
    """A global 2 I far from the files' average 0.25 I: the server outscores a."""
    save_file({"weight": 2 * torch.eye(2)}, hand_made / "global.safetensors")
    ranking = explain_hand_made(hand_made, "--client-weights", "1,3")
    server = ranking[ranking["client_id"] == "server"]
    top = ranking.query("rank == 1")
    assert top["client_id"].tolist() == ["a", "a"]
    assert (server["score"].to_numpy() > top["score"].to_numpy()).all()
    assert server["rank"].isna().all() and server["probability"].isna().all()
    probs = ranking[ranking["client_id"].isin(["a", "b"])]
    assert probs.groupby("input")["probability"].sum().tolist() == pytest.approx(
        [1.0, 1.0]
    )
    data = json.loads((hand_made / "out" / "explanation.json").read_text())
    assert data["pseudo_clients"] == ["server"]
    first = data["inputs"][0]
    assert first["traced_client"] == "a" and first["pseudo_client_would_win"]
    assert [e["client_id"] for e in first["ranking"]] == ["a", "b"]
    assert first["pseudo_clients"] == [
        {"client_id": "server", "score": pytest.approx(1.75)}
    ]


def test_cumulative_known_answer_on_any_model(hand_made: Path, capsys) -> None:
    """One round (theta_0 = 0 -> 0.5 I): U_a = 0.25 I, U_b = 0, U_server = 0.25 I.

    Explained at another model (W = I): s_k = <(e_t - softmax(W x)) x^T, U_k>.
    """
    run = hand_made / "run"
    store = CumulativeUpdates()
    store.add(
        FusedRound.weighted_average(
            1,
            "fedavg",
            ["a", "b"],
            [1, 3],
            {"weight": torch.zeros(2, 2)},
            [{"weight": torch.eye(2)}, {"weight": torch.zeros(2, 2)}],
            {"weight": 0.5 * torch.eye(2)},
        )
    )
    store.save(run / "cumulative")
    save_file({"weight": torch.eye(2)}, hand_made / "w1.safetensors")
    args = [
        "explain",
        "--run-dir",
        str(run),
        "--architecture",
        "tests.test_cli:tiny_linear",
        "--method",
        "cumulative",
        "--global",
        str(hand_made / "w1.safetensors"),
        "--tensors",
        str(hand_made / "x.safetensors"),
        "-q",
        "--no-plot",
    ]
    assert main(args) == 0
    capsys.readouterr()
    without_model = [a for a in args if a != str(hand_made / "w1.safetensors")]
    without_model.remove("--global")
    rc, err = run_cli(capsys, *without_model)
    assert rc == 2 and "final model by default" in err and "keep-final-model" in err
    ranking = pd.read_csv(run / "explain" / "global-cumulative" / "ranking.csv")
    score = ranking.set_index(["input", "client_id"])["score"]
    gains = [log_softmax_gain([1.0, 0.0], 0), log_softmax_gain([0.0, 2.0], 1)]
    for b, x_t in ((0, 1.0), (1, 2.0)):
        assert score[(b, "a")] == pytest.approx(0.25 * x_t * gains[b], rel=1e-6)
        assert score[(b, "b")] == 0.0
        assert score[(b, "server")] == pytest.approx(score[(b, "a")], rel=1e-6)
    data = json.loads(
        (run / "explain" / "global-cumulative" / "explanation.json").read_text()
    )
    assert data["source"]["cumulative_rounds"] == [1]
    assert data["options"]["method_options"] == {"include_server": True}
    # The Python API: the same numbers; a per-round method is refused.
    model = tiny_linear()
    model.load_state_dict({"weight": torch.eye(2)})
    inputs = InputBatch(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), ("x0", "x1"))
    api = explain_cumulative(
        model,
        CumulativeUpdates.load(run / "cumulative"),
        inputs,
        ExplainOptions(method="cumulative"),
    )
    assert api.result.column_ids == ("a", "b", "server")
    assert api.result.scores[:, 0].tolist() == [score[(0, "a")], score[(1, "a")]]
    with pytest.raises(ExplainError, match="explains one round's clients"):
        explain_cumulative(model, store, inputs, ExplainOptions(method="loo"))


def test_methods_that_cannot_run_here_are_refused(hand_made: Path, capsys) -> None:
    base = [
        "explain",
        "--architecture",
        "tests.test_cli:tiny_linear",
        "--global",
        str(hand_made / "global.safetensors"),
        "--clients",
        str(hand_made / "a.safetensors"),
        str(hand_made / "b.pt"),
        "--client-weights",
        "1,3",
        "--tensors",
        str(hand_made / "x.safetensors"),
        "--out",
        str(hand_made / "out"),
        "-q",
    ]
    cases = [
        (["--method", "cross-round"], "accumulates its scores during training"),
        (["--method", "cross-round-unweighted"], "use\n--method cumulative"),
        (["--method", "update"], "pass --previous FILE"),
        (["--method", "cumulative"], "--method cumulative needs --run-dir"),
        (["--method", "loo", "--pk"], "--pk/--no-pk: not an option of method 'loo'"),
        (["--method", "loo", "--layers", "all"], "--layers: not an option"),
        (["--method", "update", "--no-pk"], "of method 'update'"),
        (["--method", "paper", "--objective", "margin"], "--objective: not an"),
        (
            ["--method", "loo", "--client-chunk-size", "1"],
            "--client-chunk-size: not an option of method 'loo'",
        ),
        (["--client-weights", "1.5,3"], "positive whole number"),
    ]
    for extra, message in cases:
        rc, err = run_cli(capsys, *base, *extra)
        assert rc == 2, extra
        assert message.replace("\n", " ") in err.replace("\n", " "), (extra, err)
    one = [x for x in base if x != str(hand_made / "b.pt")]
    one[one.index("1,3")] = "1"
    rc, err = run_cli(capsys, *one, "--method", "loo")
    assert rc == 2 and "the round without its only client" in err
    save_file({"weight": torch.zeros(2, 3)}, hand_made / "p3.safetensors")
    rc, err = run_cli(
        capsys,
        *base,
        "--method",
        "update",
        "--previous",
        str(hand_made / "p3.safetensors"),
    )
    assert rc == 2 and "previous model" in err and "(2, 3)" in err


def test_layers_and_objective_reach_the_methods(hand_made: Path) -> None:
    """--objective reaches update; --layers reaches paper (Linear is traced by both)."""
    save_file({"weight": torch.zeros(2, 2)}, hand_made / "prev.safetensors")
    margin = explain_hand_made(
        hand_made,
        "--method",
        "update",
        "--client-weights",
        "1,3",
        "--previous",
        str(hand_made / "prev.safetensors"),
        "--objective",
        "margin",
    )
    # margin = z_t - max_other z: d/dW = (e_t - e_other) x^T; <., 0.25 I> = 0.25 x_t
    assert margin.query("client_id == 'a'")["score"].tolist() == pytest.approx(
        [0.25, 0.5]
    )
    data = json.loads((hand_made / "out" / "explanation.json").read_text())
    assert data["options"]["method_options"]["objective"] == "margin"
    ranking = explain_hand_made(hand_made, "--no-pk", "--layers", "paper")
    data = json.loads((hand_made / "out" / "explanation.json").read_text())
    assert data["options"]["method_options"]["layers"] == "paper"
    assert ranking.query("rank == 1")["probability"].tolist() == pytest.approx(
        [sigmoid(1.0), sigmoid(2.0)]
    )


def run_cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.err


def test_bad_requests_fail_with_named_culprits(hand_made: Path, capsys) -> None:
    base = [
        "explain",
        "--architecture",
        "tests.test_cli:tiny_linear",
        "--global",
        str(hand_made / "global.safetensors"),
        "--tensors",
        str(hand_made / "x.safetensors"),
        "--out",
        str(hand_made / "out"),
        "-q",
        "--no-pk",
    ]
    a = str(hand_made / "a.safetensors")
    save_file({"weight": torch.zeros(3, 2)}, hand_made / "wide.safetensors")
    torch.save(nn.Linear(2, 2), hand_made / "module.pt")
    data = (hand_made / "a.safetensors").read_bytes()
    (hand_made / "cut.safetensors").write_bytes(data[: len(data) - 5])
    cases = [
        (
            ["--clients", a, str(hand_made / "wide.safetensors")],
            "client 'wide' (",
        ),
        (["--clients", a, str(hand_made / "module.pt")], "unsafe unpickling"),
        (["--clients", a, str(hand_made / "cut.safetensors")], "truncated or corrupt"),
        (["--clients", a, str(hand_made / "gone.pt")], "gone.pt does not exist"),
        (["--clients", a, "--client-ids", "x,y"], "2 names for 1 client"),
        (["--clients", a, "--target", "true", "--split", "test"], "exactly one input"),
        (["--clients", a, "--round", "1"], "--round needs --run-dir"),
    ]
    for extra, message in cases:
        rc, err = run_cli(capsys, *base, *extra)
        assert rc == 2, extra
        assert message in err, (extra, err)
        assert err.startswith("tracefl explain: error: ")
    rc, err = run_cli(capsys, *base, "--clients", a)
    assert rc == 0  # one client is fine
    rc, err = run_cli(
        capsys,
        *[x for x in base if x != "--no-pk"],
        "--clients",
        a,
        a,
        "--client-ids",
        "p,q",
    )
    assert rc == 2 and "--client-weights: the method uses the data shares" in err
    with pytest.raises(SystemExit):  # argparse: unknown method name
        main([*base, "--clients", a, "--method", "nope"])
    save_file({"weight": torch.zeros(2, 3)}, hand_made / "g3.safetensors")
    rc, err = run_cli(
        capsys,
        *[
            x
            if x != str(hand_made / "global.safetensors")
            else str(hand_made / "g3.safetensors")
            for x in base
        ],
        "--clients",
        a,
    )
    assert rc == 2 and "global model" in err and "(2, 3)" in err


# ------------------------------------------------ models saved by training


def train_and_save(out: Path) -> dict:
    """Two real FedAvg rounds of 3 clients on MNIST-5k, saved by the store.

    Writes what a run writes (run.json, clients.csv, rounds.csv) plus the
    model store, the way the ServerApp's per-round step will.
    """
    cfg = parse_run_config(
        {
            "num-clients": 3,
            "num-server-rounds": 2,
            "server-test-fraction": 0.8,
            "max-server-data-size": 64,
            "max-per-client-data-size": 200,
            "output-dir": str(out),
            "keep-models-rounds": "all",
            "keep-final-model": True,
        }
    )
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    torch.manual_seed(cfg.seed)
    global_model = build_model(cfg.model, spec)
    store = ModelStore.for_run(cfg, out, global_model.state_dict(), cfg.num_clients)
    settings = TrainSettings(1, 32, "sgd", 0.05, 0.9, 0.0)
    client_rows, round_rows = [], []
    partitions = [
        load_client_data(cfg, pid, cfg.num_clients) for pid in range(cfg.num_clients)
    ]
    for r in (1, 2):
        previous = {k: v.clone() for k, v in global_model.state_dict().items()}
        states, sizes = [], []
        for pid, data in enumerate(partitions):
            local = build_model(cfg.model, spec)
            local.load_state_dict(previous)
            train(local, data.train, settings, torch.device("cpu"), seed=10 * r + pid)
            states.append(local.state_dict())
            sizes.append(len(data.train))
            client_rows.append(
                {
                    "round": r,
                    "client": pid,
                    "num_examples": len(data.train),
                    **{f"label_{c}": int(n) for c, n in enumerate(data.label_counts)},
                }
            )
        total = sum(sizes)
        aggregate = {
            k: sum(s[k] * (n / total) for s, n in zip(states, sizes, strict=True))
            for k in previous
        }
        global_model.load_state_dict(aggregate)
        fused = FusedRound.weighted_average(
            r,
            "fedavg",
            [f"client-{i}" for i in range(cfg.num_clients)],
            sizes,
            previous,
            states,
            aggregate,
        )
        assert store.save_round(fused)
        round_rows.append({"round": r, "status": "not-traced", "test_accuracy": 0.1})
    assert store.save_final(global_model.state_dict(), 2)
    (out / "run.json").write_text(
        json.dumps({"config": cfg.to_run_config(), "status": "completed"})
    )
    pd.DataFrame(client_rows).to_csv(out / "clients.csv", index=False)
    pd.DataFrame(round_rows).to_csv(out / "rounds.csv", index=False)
    return {"cfg": cfg, "global": global_model, "store": store}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("run")
    return {"out": out, **train_and_save(out)}


def reference_probs(trained: dict, server_round: int, features: torch.Tensor):
    """The engine on the round's models, called directly (what the CLI must match)."""
    fused = ModelStore.open(trained["out"]).load_round(server_round)
    cfg = trained["cfg"]
    model = build_model(cfg.model, run_dataset_spec(cfg.dataset, cfg.image_size))
    model.load_state_dict(fused.aggregate, strict=False)
    engine = NeuronProvenance(
        model,
        list(fused.clients),
        list(fused.num_examples),
        list(fused.client_ids),
        decay=cfg.beta_decay,
        enable_beta=cfg.enable_beta,
        scale_by_data_share=cfg.client_weights_normalization,
    )
    return engine.attribute(features).probs.numpy()


def wide(ranking: pd.DataFrame) -> np.ndarray:
    """(B, K) client probabilities (pseudo-clients, which have none, left out)."""
    clients = ranking[ranking["rank"].notna()]
    return clients.pivot(
        index="input", columns="client_id", values="probability"
    ).to_numpy()


def test_explain_a_saved_round_of_a_real_run(trained: dict, tmp_path: Path) -> None:
    out = trained["out"]
    rc = main(
        [
            "explain",
            "--run-dir",
            str(out),
            "--round",
            "2",
            "--split",
            "test",
            "--limit",
            "6",
            "--out",
            str(tmp_path / "e"),
            "-q",
        ]
    )
    assert rc == 0
    ranking = pd.read_csv(tmp_path / "e" / "ranking.csv")
    test = load_server_test(trained["cfg"])
    expected = reference_probs(trained, 2, test.features[:6])
    np.testing.assert_allclose(wide(ranking), expected, rtol=0, atol=1e-12)
    top = ranking[ranking["rank"] == 1]
    assert top["true_label"].tolist() == test.labels[:6].tolist()
    # clients.csv gives the label counts: the strict verdict is filled in.
    clients = pd.read_csv(out / "clients.csv").query("round == 2")
    counts = clients.sort_values("client").filter(like="label_").to_numpy()
    traced = top["client_id"].str.removeprefix("client-").astype(int).to_numpy()
    holders = counts[:, test.labels[:6].numpy()].T  # (B, K) counts of the label
    assert (
        top["strict_correct"].tolist()
        == (holders[np.arange(6), traced] == holders.max(1)).tolist()
    )
    data = json.loads((tmp_path / "e" / "explanation.json").read_text())
    assert data["source"]["round"] == 2
    fused = ModelStore.open(out).load_round(2)
    assert data["clients"] == [
        {"client_id": cid, "num_examples": n, "data_share": pytest.approx(p)}
        for cid, n, p in zip(
            fused.client_ids, fused.num_examples, fused.data_share, strict=True
        )
    ]
    assert data["options"]["method_options"]["decay"] == 0.9


@pytest.mark.parametrize("name", ["update", "loo"])
def test_saved_round_with_other_methods(
    trained: dict, tmp_path: Path, name: str
) -> None:
    """update/loo on a saved round: the registry's method on the same round."""
    from tracefl.attribution import create_round_method

    out = trained["out"]
    args = ["explain", "--run-dir", str(out), "--round", "2", "--method", name]
    args += ["--split", "test", "--limit", "4", "-q", "--no-plot"]
    assert main([*args, "--out", str(tmp_path / name)]) == 0
    ranking = pd.read_csv(tmp_path / name / "ranking.csv")
    fused = ModelStore.open(out).load_round(2)
    cfg = trained["cfg"]
    model = build_model(cfg.model, run_dataset_spec(cfg.dataset, cfg.image_size))
    model.load_state_dict(fused.aggregate, strict=False)
    options = {"include_server": False} if name == "update" else {}
    expected = create_round_method(name, **options).attribute(
        fused, model, load_server_test(cfg).features[:4]
    )
    got = ranking.pivot(index="input", columns="client_id", values="score")
    np.testing.assert_array_equal(
        got[list(expected.column_ids)].to_numpy(), expected.scores.numpy()
    )
    assert ranking["probability"].isna().all()
    traced = ranking.query("rank == 1")["client_id"].tolist()
    assert traced == expected.traced_client_ids


def test_images_tensors_and_splits_agree(trained: dict, tmp_path: Path) -> None:
    """The same digits as PNG files, a tensor file and --indices: same answer."""
    out = trained["out"]
    cfg = trained["cfg"]
    test = load_server_test(cfg)
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    x = test.features[[1, 4]]
    pixels = ((x * spec.std[0] + spec.mean[0]) * 255).round().clamp(0, 255)
    folder = tmp_path / "digits"
    for i, label in zip((1, 4), test.labels[[1, 4]].tolist(), strict=True):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        img = pixels[[1, 4].index(i), 0].to(torch.uint8).numpy()
        Image.fromarray(img).save(folder / str(label) / f"digit{i}.png")
    save_file({"inputs": x.contiguous()}, tmp_path / "x.safetensors")
    common = ["explain", "--run-dir", str(out), "--round", "last", "-q"]
    results = {}
    for name, extra in (
        ("images", ["--images", str(folder)]),
        ("tensors", ["--tensors", str(tmp_path / "x.safetensors")]),
        ("split", ["--split", "test", "--indices", "1,4"]),
    ):
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        results[name] = pd.read_csv(tmp_path / name / "ranking.csv")
    order = sorted(range(2), key=lambda b: test.labels[[1, 4]].tolist()[b])
    expected = reference_probs(trained, 2, x)
    np.testing.assert_allclose(wide(results["split"]), expected, atol=1e-12)
    np.testing.assert_allclose(wide(results["tensors"]), expected, atol=1e-12)
    np.testing.assert_allclose(wide(results["images"]), expected[order], atol=1e-6)
    labels = results["images"].query("rank == 1")["true_label"].tolist()
    assert labels == sorted(test.labels[[1, 4]].tolist())


def test_explain_options_reach_the_engine(trained: dict, tmp_path: Path) -> None:
    out = trained["out"]
    base = [
        "explain",
        "--run-dir",
        str(out),
        "--round",
        "1",
        "--split",
        "client-0",
        "--limit",
        "4",
        "-q",
        "--no-plot",
    ]
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "a"),
                "--no-pk",
                "--no-beta",
                "--chunk-size",
                "3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "a" / "explanation.json").read_text())
    assert data["options"]["method_options"] == {
        "scale_by_data_share": False,
        "enable_beta": False,
        "decay": 0.9,
        "layers": "all",
        "include_server": False,  # the run's FedAvg without DP, as in the app
    }
    assert data["options"]["chunk_size"] == 3
    assert not (tmp_path / "a" / "explanation.png").exists()
    fused = ModelStore.open(out).load_round(1)
    cfg = trained["cfg"]
    model = build_model(cfg.model, run_dataset_spec(cfg.dataset, cfg.image_size))
    model.load_state_dict(fused.aggregate, strict=False)
    features = load_client_data(cfg, 0, 3).train.features[:4]
    expected = (
        NeuronProvenance(
            model,
            list(fused.clients),
            list(fused.num_examples),
            list(fused.client_ids),
            enable_beta=False,
            scale_by_data_share=False,
            chunk_size=3,
        )
        .attribute(features)
        .probs.numpy()
    )
    np.testing.assert_allclose(
        wide(pd.read_csv(tmp_path / "a" / "ranking.csv")), expected, atol=1e-12
    )
    # Streaming one client's parameters at a time changes nothing.
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "b"),
                "--no-pk",
                "--no-beta",
                "--client-chunk-size",
                "1",
            ]
        )
        == 0
    )
    data = json.loads((tmp_path / "b" / "explanation.json").read_text())
    assert data["options"]["method_options"]["client_chunk_size"] == 1
    np.testing.assert_allclose(  # float32 sums in another order: rounding only
        wide(pd.read_csv(tmp_path / "b" / "ranking.csv")), expected, rtol=1e-6
    )


def test_saved_round_errors(trained: dict, tmp_path: Path, capsys) -> None:
    base = ["explain", "--run-dir", str(trained["out"]), "-q", "--out", str(tmp_path)]
    test = ["--split", "test", "--limit", "2"]
    rc, err = run_cli(capsys, *base, *test, "--round", "7")
    assert rc == 2 and "round 7 is not saved" in err and "[1, 2]" in err
    rc, err = run_cli(capsys, *base, *test, "--round", "1", "--clients", "x.pt")
    assert rc == 2 and "do not pass --clients" in err
    rc, err = run_cli(capsys, *base, "--round", "1", "--split", "client-9")
    assert rc == 2 and "--split client-9: the run has clients 0..2" in err
    rc, err = run_cli(capsys, *base, *test, "--round", "1", "--indices", "0,99")
    assert rc == 2 and "--indices 99" in err
    rc, err = run_cli(capsys, *base, *test, "--round", "1", "--images", "x")
    assert rc == 2 and "exactly one input source" in err
    rc, err = run_cli(capsys, *base, *test, "--round", "1", "--previous", "p.pt")
    assert rc == 2 and "do not pass --previous" in err
    rc, err = run_cli(capsys, *base, *test, "--method", "cumulative")
    assert rc == 2 and "no cumulative store" in err and "cumulative" in err


def test_models_and_report_commands(trained: dict, capsys) -> None:
    out = trained["out"]
    assert main(["models", str(out)]) == 0
    text = capsys.readouterr().out
    assert "architecture: dataset=mnist" in text and "model=cnn" in text
    assert "final model: final/global.safetensors (round 2)" in text
    assert "round 1: fedavg" in text and "client-2 (n=" in text
    final = ModelStore.open(out).load_final()
    trained_state = trained["global"].state_dict()
    assert all(torch.equal(final[k], trained_state[k]) for k in trained_state)
    assert main(["report", str(out)]) == 0
    assert (out / "accuracy.png").is_file()


def test_console_script_is_declared_and_runs(hand_made: Path) -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"tracefl": "tracefl.cli:main"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracefl.cli",
            "explain",
            "--architecture",
            "tests.test_cli:tiny_linear",
            "--global",
            str(hand_made / "global.safetensors"),
            "--clients",
            str(hand_made / "a.safetensors"),
            str(hand_made / "b.pt"),
            "--no-pk",
            "--tensors",
            str(hand_made / "x.safetensors"),
            "--out",
            str(hand_made / "cli"),
            "--no-plot",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "a 0.731  b 0.269" in proc.stdout
    assert "wrote" in proc.stdout


def test_text_inputs_from_a_text_file_and_a_tensor_file(tmp_path: Path) -> None:
    """A GPT-2 text model: --texts tokenises like the run, --tensors takes ids."""
    from tracefl.text import build_text_model, encode_texts

    torch.manual_seed(0)
    global_model = build_text_model("gpt2-tiny", 14, max_seq_len=32)
    state = global_model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "g.safetensors")
    clients = []
    for k in range(2):
        torch.manual_seed(k + 1)
        noisy = {
            n: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v
            for n, v in state.items()
        }
        path = tmp_path / f"c{k}.safetensors"
        save_file({n: v.contiguous() for n, v in noisy.items()}, path)
        clients.append((path, noisy))
    texts = ["football player league", "river valley mountain lake"]
    (tmp_path / "t.txt").write_text("3\t" + texts[0] + "\n7\t" + texts[1] + "\n")
    ids = encode_texts(texts, "gpt2-tiny", 32)
    save_file(ids, tmp_path / "ids.safetensors")
    common = [
        "explain",
        "--model",
        "gpt2-tiny",
        "--dataset",
        "dbpedia_14",
        "--max-seq-len",
        "32",
        "--global",
        str(tmp_path / "g.safetensors"),
        "--clients",
        *(str(p) for p, _ in clients),
        "--client-weights",
        "2,1",
        "-q",
        "--no-plot",
    ]
    assert (
        main(
            [*common, "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "a")]
        )
        == 0
    )
    assert (
        main(
            [
                *common,
                "--tensors",
                str(tmp_path / "ids.safetensors"),
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    a = pd.read_csv(tmp_path / "a" / "ranking.csv")
    b = pd.read_csv(tmp_path / "b" / "ranking.csv")
    assert a.query("rank == 1")["true_label"].tolist() == [3, 7]
    expected = (
        NeuronProvenance(
            global_model,
            [s for _, s in clients],
            [2, 1],
            ["c0", "c1"],
            scale_by_data_share=True,
        )
        .attribute(ids)
        .probs.numpy()
    )
    np.testing.assert_allclose(wide(a), expected, atol=1e-12)
    np.testing.assert_allclose(wide(b), expected, atol=1e-12)
