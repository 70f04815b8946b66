"""Text models, tokenisation and text datasets (DBpedia-14, Yahoo Answers), offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.fixtures import (
    DBPEDIA14_WORDS,
    read_csv_rows,
    run_simulation,
    write_dbpedia14,
    write_yahoo_answers,
)
from tracefl.config import parse_run_config
from tracefl.dataset import (
    client_partition,
    load_client_data,
    load_server_test,
    raw_splits,
    to_tensors,
)
from tracefl.model import build_model
from tracefl.registry import dataset_spec
from tracefl.text import (
    ModelUnavailableError,
    build_text_model,
    encode_texts,
    get_tokenizer,
    minilm_dir,
)
from tracefl.train import TrainSettings, evaluate, logits_of, train

REPO = Path(__file__).resolve().parent.parent
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)


def _run_offline(code: str, tmp_path: Path, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter with the Hub forced offline and an
    empty HF cache; the code prints one JSON line last."""
    env = {**os.environ, **OFFLINE_ENV, "HF_HOME": str(tmp_path / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ tokenisation


@pytest.mark.parametrize("model", ["minilm", "gpt2-tiny"])
def test_encode_texts_gives_real_distinct_ids(model: str) -> None:
    texts = ["the football club won the league", "a river flows into the lake"]
    enc = encode_texts(texts, model, max_seq_len=32)
    assert set(enc) == {"input_ids", "attention_mask"}
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.shape == mask.shape and ids.shape[0] == 2 and ids.shape[1] <= 32
    tok = get_tokenizer(model)
    # Round trip: decoding the ids gives back the words.
    for row, text in zip(ids, texts, strict=True):
        assert tok.decode(row, skip_special_tokens=True) == text
    # Different texts, different ids; real vocabulary ids, not pads/unknowns.
    assert not torch.equal(ids[0], ids[1])
    real = ids[mask.bool()]
    assert (real != tok.pad_token_id).all() and (real != tok.unk_token_id).all()
    assert len(set(real.tolist())) >= 10
    assert int(ids[0, 0]) == tok.cls_token_id
    # Padding only where the mask is 0.
    assert (ids[~mask.bool()] == tok.pad_token_id).all()
    assert mask[0].sum() == len(tok(texts[0])["input_ids"])


def test_encode_texts_truncates_and_pads_to_longest() -> None:
    long_text = " ".join(["football"] * 100)
    enc = encode_texts([long_text, "short text"], "minilm", max_seq_len=16)
    assert enc["input_ids"].shape == (2, 16)
    assert enc["attention_mask"][0].sum() == 16
    assert enc["attention_mask"][1].sum() == 4  # [CLS] short text [SEP]
    assert int(enc["input_ids"][0, -1]) == get_tokenizer("minilm").sep_token_id
    empty = encode_texts([], "minilm", max_seq_len=16)
    assert empty["input_ids"].shape[0] == 0


def test_tokenizer_is_cached_per_process() -> None:
    assert get_tokenizer("minilm") is get_tokenizer("minilm")
    # gpt2-tiny documents that it reuses the MiniLM WordPiece vocabulary.
    a = encode_texts(["company shares"], "minilm", 8)["input_ids"]
    b = encode_texts(["company shares"], "gpt2-tiny", 8)["input_ids"]
    assert torch.equal(a, b)


# ------------------------------------------------------------------------ models


def _padding_invariant(model: torch.nn.Module, model_name: str) -> None:
    """A text's logits do not depend on how much padding its batch adds."""
    model.eval()
    alone = encode_texts(["the river valley"], model_name, 32)
    batch = encode_texts(
        [
            "the river valley",
            "a much longer text about the football league and the players of the club",
        ],
        model_name,
        32,
    )
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1]
    with torch.no_grad():
        a = logits_of(model, alone)[0]
        b = logits_of(model, batch)[0]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_gpt2_tiny_builds_and_returns_logits() -> None:
    torch.manual_seed(0)
    model = build_text_model("gpt2-tiny", num_classes=14, max_seq_len=32)
    tok = get_tokenizer("gpt2-tiny")
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.n_positions == 32 and model.config.n_layer == 2
    enc = encode_texts(["a b c", "the film was directed by him"], "gpt2-tiny", 32)
    out = model(**enc)
    assert out.logits.shape == (2, 14)
    assert torch.isfinite(out.logits).all()
    _padding_invariant(model, "gpt2-tiny")


def test_gpt2_tiny_learns_fixture_with_adamw(tmp_path: Path) -> None:
    """AdamW (optimizer='adamw') trains a text model through the real loaders."""
    data_dir = write_dbpedia14(tmp_path / "data")
    cfg = parse_run_config(
        {
            "dataset": "dbpedia_14",
            "model": "gpt2-tiny",
            "data-dir": str(data_dir),
            "max-seq-len": 32,
        }
    )
    spec = dataset_spec(cfg.dataset)
    splits = raw_splits(cfg)
    train_set = to_tensors(splits.train, spec, cfg)
    test_set = to_tensors(splits.test, spec, cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, spec, max_seq_len=cfg.max_seq_len)
    device = torch.device("cpu")
    loss_before, _ = evaluate(model, test_set, 16, device)
    settings = TrainSettings(
        epochs=5,
        batch_size=8,
        optimizer="adamw",
        lr=3e-3,
        momentum=0.0,
        weight_decay=0.01,
    )
    train(model, train_set, settings, device, seed=0)
    loss_after, acc_after = evaluate(model, test_set, 16, device)
    assert loss_after < loss_before
    assert acc_after >= 0.5  # 4 classes: chance is 0.25


def test_minilm_loads_offline_in_fresh_process(tmp_path: Path) -> None:
    result = _run_offline(
        """
        import json, torch
        from safetensors.torch import load_file
        from tracefl.text import build_text_model, encode_texts, minilm_dir
        model = build_text_model("minilm", num_classes=14, max_seq_len=32).eval()
        ref = load_file(str(minilm_dir() / "model.safetensors"))
        key = [k for k in ref if k.endswith("word_embeddings.weight")][0]
        same = torch.equal(model.bert.embeddings.word_embeddings.weight, ref[key])
        enc = encode_texts(["hello world", "a company"], "minilm", 32)
        logits = model(**enc).logits
        print(json.dumps({"shape": list(logits.shape), "pretrained": same,
                          "type": type(model).__name__}))
        """,
        tmp_path,
    )
    assert result == {
        "shape": [2, 14],
        "pretrained": True,
        "type": "BertForSequenceClassification",
    }


def test_minilm_padding_invariant() -> None:
    torch.manual_seed(0)
    model = build_text_model("minilm", num_classes=4, max_seq_len=32)
    assert model.classifier.out_features == 4
    _padding_invariant(model, "minilm")


def test_minilm_dir_holds_tokenizer_and_weights() -> None:
    folder = minilm_dir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "model.safetensors"):
        assert (folder / name).is_file()


def test_hub_model_fails_fast_and_clearly_offline(tmp_path: Path) -> None:
    result = _run_offline(
        """
        import json, time
        import transformers, tracefl.sources.hub  # imports are not what we time
        from tracefl.text import ModelUnavailableError, build_text_model, encode_texts
        out = {}
        names = ("distilbert/distilbert-base-uncased", "openai-community/openai-gpt")
        for name in names:
            start = time.perf_counter()
            try:
                build_text_model(name, num_classes=14)
                out[name] = "loaded"
            except ModelUnavailableError as err:
                out[name] = [str(err), time.perf_counter() - start]
        try:
            encode_texts(["x"], "google-bert/bert-base-cased", 16)
        except ModelUnavailableError as err:
            out["encode"] = str(err)
        print(json.dumps(out))
        """,
        tmp_path,
    )
    for name in ("distilbert/distilbert-base-uncased", "openai-community/openai-gpt"):
        message, seconds = result[name]
        assert name in message
        assert "'minilm'" in message and "'gpt2-tiny'" in message
        assert seconds < 5.0
    assert "google-bert/bert-base-cased" in result["encode"]


def test_unknown_text_model_name_is_rejected() -> None:
    with pytest.raises(ModelUnavailableError, match="minilm, gpt2-tiny"):
        encode_texts(["x"], "bert-tiny", 16)


# ---------------------------------------------------------------------- datasets


def test_dbpedia_fixture_loads_through_data_dir(tmp_path: Path) -> None:
    data_dir = write_dbpedia14(tmp_path / "data", train_per_class=10, test_per_class=3)
    raw = pd.read_parquet(data_dir / "dbpedia_14" / "train-00000-of-00001.parquet")
    cfg = parse_run_config(
        {
            "dataset": "dbpedia_14",
            "model": "minilm",
            "data-dir": str(data_dir),
            "num-clients": 3,
            "min-partition-size": 1,
            "dirichlet-alpha": 0.5,
            "max-seq-len": 32,
        }
    )
    splits = raw_splits(cfg)
    assert splits.train.column_names == ["text", "label"]
    assert splits.train["text"] == [
        f"{t} {c}" for t, c in zip(raw["title"], raw["content"], strict=True)
    ]
    assert splits.train["label"] == raw["label"].tolist()
    assert len(splits.test) == 12

    seen: list[int] = []
    for pid in range(3):
        client = load_client_data(cfg, pid, 3)
        idx, labels = client_partition(cfg, pid, 3)
        seen += idx.tolist()
        assert client.label_counts.shape == (14,)
        assert client.label_counts.sum() == len(client.train) == len(idx) >= 1
        assert torch.equal(
            client.train.labels, torch.as_tensor(raw["label"].to_numpy()[idx])
        )
        ids = client.train.features["input_ids"]
        assert ids.dtype == torch.int64 and ids.shape[1] <= 32
        # Row i's tokens contain its class keywords.
        tok = get_tokenizer("minilm")
        words = tok.decode(ids[0], skip_special_tokens=True).split()
        assert set(words) & set(DBPEDIA14_WORDS[int(labels[0])])
    assert sorted(seen) == list(range(len(raw)))  # a partition of the pool

    test = load_server_test(cfg)
    assert len(test) == 12
    assert sorted(set(test.labels.tolist())) == [0, 1, 2, 3]


def test_yahoo_fixture_loads_with_and_without_answer(tmp_path: Path) -> None:
    data_dir = write_yahoo_answers(tmp_path / "data")
    raw = pd.read_parquet(
        data_dir / "yahoo_answers_topics" / "test-00000-of-00001.parquet"
    )
    base = {
        "dataset": "yahoo_answers_topics",
        "model": "gpt2-tiny",
        "data-dir": str(data_dir),
        "num-clients": 2,
        "min-partition-size": 1,
    }
    without = raw_splits(parse_run_config(base)).test
    with_answer = raw_splits(
        parse_run_config({**base, "text-include-answer": True})
    ).test
    assert without.column_names == ["text", "label"]
    assert without["label"] == raw["topic"].tolist()
    assert not any("answer" in t.split() for t in without["text"])
    assert all("answer" in t.split() for t in with_answer["text"])
    assert all(
        q in t for q, t in zip(raw["question_title"], without["text"], strict=True)
    )
    test = load_server_test(parse_run_config(base))
    assert test.features["input_ids"].shape[0] == len(raw)
    counts = load_client_data(parse_run_config(base), 1, 2).label_counts
    assert counts.shape == (10,) and counts[4:].sum() == 0


def test_dirichlet_partition_of_text_pool_is_label_skewed(tmp_path: Path) -> None:
    data_dir = write_dbpedia14(
        tmp_path / "data", train_per_class=30, classes=tuple(range(8))
    )
    shares = {}
    for alpha in (0.1, 100.0):
        cfg = parse_run_config(
            {
                "dataset": "dbpedia_14",
                "model": "minilm",
                "data-dir": str(data_dir),
                "num-clients": 4,
                "min-partition-size": 1,
                "dirichlet-alpha": alpha,
            }
        )
        client_labels = [client_partition(cfg, pid, 4)[1] for pid in range(4)]
        shares[alpha] = np.mean(
            [np.bincount(c, minlength=14).max() / len(c) for c in client_labels]
        )
    assert shares[0.1] > shares[100.0] + 0.2


# ---------------------------------------------------------------------- e2e


def _e2e_config(model: str, data_dir: Path, lr: float) -> dict:
    return {
        "dataset": "dbpedia_14",
        "model": model,
        "data-dir": str(data_dir),
        "num-clients": 2,
        "min-train-nodes": 2,
        "min-available-nodes": 2,
        "num-server-rounds": 1,
        "local-epochs": 2,
        "batch-size": 8,
        "optimizer": "adamw",
        "lr": lr,
        "max-seq-len": 32,
        "dirichlet-alpha": 1.0,
        "min-partition-size": 1,
        "provenance-inputs-per-label": 1,
        "provenance-max-inputs": 4,
    }


@pytest.mark.e2e
@pytest.mark.parametrize(("model", "lr"), [("minilm", 1e-4), ("gpt2-tiny", 3e-3)])
def test_text_end_to_end_simulation(model: str, lr: float, tmp_path: Path) -> None:
    data_dir = write_dbpedia14(tmp_path / "data")
    out = tmp_path / "out"
    rc, log = run_simulation(_e2e_config(model, data_dir, lr), out)
    assert rc == 0, log[-5000:]
    rounds = read_csv_rows(out / "rounds.csv")
    assert [r["status"] for r in rounds] == ["traced"], log[-3000:]
    inputs = read_csv_rows(out / "inputs.csv")
    assert 1 <= len(inputs) == int(rounds[0]["num_traced"]) <= 4
    for row in inputs:
        assert row["true_label"] == row["predicted_label"]
        assert row["traced_client"] in ("0", "1")
        probs = float(row["prob_client-0"]) + float(row["prob_client-1"])
        assert probs == pytest.approx(1.0, abs=1e-4)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["config"]["model"] == model
