"""MedMNIST (PathMNIST, OrganAMNIST) npz loading and CIFAR-10 mirrors, offline."""

from __future__ import annotations

import time
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
import torch

from tests.fixtures import (
    read_csv_rows,
    run_simulation,
    write_cifar10,
    write_medmnist_npz,
)
from tracefl.config import parse_run_config
from tracefl.dataset import (
    client_partition,
    load_client_data,
    load_server_test,
    raw_splits,
)
from tracefl.model import build_model
from tracefl.registry import (
    ORGANAMNIST_LABELS,
    PATHMNIST_LABELS,
    dataset_spec,
    run_dataset_spec,
)
from tracefl.sources import DataUnavailableError, load_medmnist
from tracefl.sources.medmnist_npz import MedMNISTUnavailableError

MEDMNIST = [("pathmnist", 3, 9), ("organamnist", 1, 11)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _cfg(dataset: str, data_dir: Path | str, **extra: object):
    return parse_run_config(
        {
            "dataset": dataset,
            "model": "cnn",
            "data-dir": str(data_dir),
            "num-clients": 2,
            "min-partition-size": 1,
            **extra,
        }
    )


# ----------------------------------------------------------------------- medmnist


@pytest.mark.parametrize(("flag", "channels", "num_classes"), MEDMNIST)
def test_medmnist_npz_loads_through_real_loaders(
    flag: str, channels: int, num_classes: int, tmp_path: Path
) -> None:
    path = write_medmnist_npz(
        tmp_path / "data", flag, train_per_class=4, val_per_class=2, test_per_class=3
    )
    npz = np.load(path)
    assert npz["train_labels"].shape == (4 * num_classes, 1)
    cfg = _cfg(flag, path.parent)
    splits = raw_splits(cfg)
    # Train pool = train split (val unused), server test = test split.
    assert len(splits.train) == 4 * num_classes
    assert len(splits.test) == 3 * num_classes
    assert splits.train["label"] == npz["train_labels"][:, 0].tolist()
    assert splits.test["label"] == npz["test_labels"][:, 0].tolist()
    first = np.asarray(splits.train.with_format("numpy")[0]["image"])
    np.testing.assert_array_equal(first, npz["train_images"][0])

    test = load_server_test(cfg)
    assert test.features.shape == (3 * num_classes, channels, 28, 28)
    assert test.features.dtype == torch.float32
    assert torch.equal(
        test.labels, torch.as_tensor(npz["test_labels"][:, 0], dtype=torch.int64)
    )
    # Normalised with mean/std 0.5: pixel p -> (p/255 - 0.5) / 0.5.
    expected = npz["test_images"][0].astype(np.float32) / 255.0 * 2.0 - 1.0
    if channels == 3:
        expected = expected.transpose(2, 0, 1)
    np.testing.assert_allclose(
        test.features[0].reshape(expected.shape).numpy(), expected, atol=1e-6
    )

    seen = []
    for pid in range(2):
        client = load_client_data(cfg, pid, 2)
        idx, _ = client_partition(cfg, pid, 2)
        seen += idx.tolist()
        assert client.train.features.shape[1:] == (channels, 28, 28)
        assert client.label_counts.shape == (num_classes,)
        assert client.label_counts.sum() == len(client.train)
    assert sorted(seen) == list(range(4 * num_classes))

    model = build_model("cnn", dataset_spec(flag))
    assert model(test.features[:5]).shape == (5, num_classes)


def test_medmnist_other_image_size_selects_file_and_model(tmp_path: Path) -> None:
    path = write_medmnist_npz(
        tmp_path / "data",
        "organamnist",
        size=64,
        train_per_class=2,
        val_per_class=1,
        test_per_class=1,
    )
    assert path.name == "organamnist_64.npz"
    cfg = _cfg("organamnist", path.parent, **{"image-size": 64})
    test = load_server_test(cfg)
    assert test.features.shape == (11, 1, 64, 64)
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    assert spec.image_size == 64
    model = build_model("cnn", spec)
    assert model(test.features).shape == (11, 11)
    # The static 28 px spec cannot take these images: the override matters.
    with pytest.raises(RuntimeError):
        build_model("cnn", dataset_spec("organamnist"))(test.features)
    # CIFAR-10 keeps its native size whatever image-size says.
    assert run_dataset_spec("cifar10", 64).image_size == 32
    # 28 px file is absent: image-size=28 must not silently use the 64 px one.
    with pytest.raises(MedMNISTUnavailableError, match="organamnist.npz"):
        load_medmnist(dataset_spec("organamnist"), str(path.parent), 28, False)


def test_medmnist_unsupported_size_and_wrong_size(tmp_path: Path) -> None:
    path = write_medmnist_npz(tmp_path / "data", "pathmnist")
    spec = dataset_spec("pathmnist")
    with pytest.raises(MedMNISTUnavailableError, match="28, 64, 128, 224"):
        load_medmnist(spec, str(path.parent), 32, False)
    path.rename(path.parent / "pathmnist_64.npz")  # 28 px content, 64 px name
    with pytest.raises(MedMNISTUnavailableError, match="28x28 but image-size = 64"):
        load_medmnist(spec, str(path.parent), 64, False)


@pytest.mark.parametrize("data_dir", ["given", ""])
def test_missing_medmnist_file_fails_fast_with_instructions(
    data_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty home, so medmnist's default folder ~/.medmnist holds nothing.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "empty"
    folder.mkdir()
    cfg = _cfg("pathmnist", folder if data_dir else "")
    expected = folder if data_dir else tmp_path / "home" / ".medmnist"
    expected = expected / "pathmnist.npz"
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        load_server_test(cfg)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "download=true" in message
    assert str(expected) in message
    if not data_dir:
        assert "~/.medmnist" in message or ".medmnist" in message
        assert "data-dir is empty" in message
    # Nothing was created or downloaded.
    assert not expected.exists()


def test_malformed_npz_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "organamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(MedMNISTUnavailableError, match="lacks"):
        load_medmnist(dataset_spec("organamnist"), str(folder), 28, False)
    labels = np.full((2, 1), 11, np.uint8)  # out of range for 11 classes
    images = np.zeros((2, 28, 28), np.uint8)
    np.savez(
        folder / "organamnist.npz",
        train_images=images,
        train_labels=labels,
        test_images=images,
        test_labels=labels,
    )
    with pytest.raises(MedMNISTUnavailableError, match=r"0\.\.10"):
        load_medmnist(dataset_spec("organamnist"), str(folder), 28, False)


def test_registry_label_names_match_medmnist() -> None:
    for flag, names in (
        ("pathmnist", PATHMNIST_LABELS),
        ("organamnist", ORGANAMNIST_LABELS),
    ):
        info = medmnist.INFO[flag]["label"]
        official = [info[str(i)] for i in range(len(info))]
        assert [n.lower() for n in names] == official
        assert dataset_spec(flag).num_classes == len(official)
        assert dataset_spec(flag).channels == medmnist.INFO[flag]["n_channels"]


def _mean_max_share(cfg, num_clients: int) -> float:
    shares = []
    for pid in range(num_clients):
        counts = load_client_data(cfg, pid, num_clients).label_counts
        shares.append(counts.max() / counts.sum())
    return float(np.mean(shares))


def _mean_entropy(cfg, num_clients: int) -> float:
    out = []
    for pid in range(num_clients):
        counts = load_client_data(cfg, pid, num_clients).label_counts
        p = counts[counts > 0] / counts.sum()
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))


def test_dirichlet_alpha_controls_label_skew(tmp_path: Path) -> None:
    path = write_medmnist_npz(
        tmp_path / "data",
        "pathmnist",
        train_per_class=60,
        val_per_class=0,
        test_per_class=1,
    )
    stats = {}
    for alpha in (0.1, 10.0):
        cfg = parse_run_config(
            {
                "dataset": "pathmnist",
                "data-dir": str(path.parent),
                "num-clients": 5,
                "min-partition-size": 5,
                "dirichlet-alpha": alpha,
            }
        )
        stats[alpha] = (_mean_max_share(cfg, 5), _mean_entropy(cfg, 5))
    skewed, balanced = stats[0.1], stats[10.0]
    assert skewed[0] > balanced[0] + 0.25  # larger dominant-label share
    assert skewed[1] < balanced[1] - 0.5  # lower label entropy (max ln 9 = 2.2)


# ------------------------------------------------------------------------ cifar10


def test_cifar10_mirror_loads_in_hub_schema(tmp_path: Path) -> None:
    data_dir = write_cifar10(tmp_path / "data", train_per_class=3, test_per_class=2)
    raw = pd.read_parquet(data_dir / "plain_text" / "test-00000-of-00001.parquet")
    assert list(raw.columns) == ["img", "label"]
    cfg = _cfg("cifar10", data_dir)
    splits = raw_splits(cfg)
    assert splits.test.column_names == ["image", "label"]
    assert splits.test["label"] == raw["label"].tolist()
    test = load_server_test(cfg)
    assert test.features.shape == (20, 3, 32, 32)
    spec = dataset_spec("cifar10")
    img = np.asarray(splits.test.with_format("numpy")[0]["image"])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    expected = (img.astype(np.float32) / 255.0 - np.array(spec.mean)) / np.array(
        spec.std
    )
    np.testing.assert_allclose(
        test.features[0].numpy(), expected.transpose(2, 0, 1), atol=1e-5
    )
    client = load_client_data(cfg, 0, 2)
    assert client.train.features.shape[1:] == (3, 32, 32)
    assert client.label_counts.shape == (10,)
    model = build_model("cnn", run_dataset_spec("cifar10", cfg.image_size))
    assert model(test.features).shape == (20, 10)


def test_cifar10_without_mirror_fails_fast_offline(tmp_path: Path) -> None:
    cfg = _cfg("cifar10", "")
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match="data-dir"):
        raw_splits(cfg)
    assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------------- e2e


@pytest.mark.e2e
@pytest.mark.parametrize("dataset", ["pathmnist", "organamnist", "cifar10"])
def test_image_end_to_end_simulation(dataset: str, tmp_path: Path) -> None:
    if dataset == "cifar10":
        data_dir = write_cifar10(tmp_path / "data", train_per_class=8, test_per_class=2)
    else:
        data_dir = write_medmnist_npz(
            tmp_path / "data",
            dataset,
            train_per_class=8,
            val_per_class=1,
            test_per_class=2,
        ).parent
    out = tmp_path / "out"
    rc, log = run_simulation(
        {
            "dataset": dataset,
            "model": "cnn",
            "data-dir": str(data_dir),
            "num-clients": 2,
            "min-train-nodes": 2,
            "min-available-nodes": 2,
            "num-server-rounds": 1,
            "local-epochs": 3,
            "batch-size": 8,
            "optimizer": "adam",
            "lr": 0.003,
            "dirichlet-alpha": 1.0,
            "min-partition-size": 1,
            "provenance-inputs-per-label": 1,
            "provenance-max-inputs": 6,
        },
        out,
    )
    assert rc == 0, log[-5000:]
    for name in ("run.json", "rounds.csv", "inputs.csv", "clients.csv"):
        assert (out / name).is_file(), name
    rounds = read_csv_rows(out / "rounds.csv")
    assert len(rounds) == 1
    assert rounds[0]["status"] == "traced", log[-3000:]
    clients = read_csv_rows(out / "clients.csv")
    assert sorted(r["client"] for r in clients) == ["0", "1"]
    inputs = read_csv_rows(out / "inputs.csv")
    assert len(inputs) == int(rounds[0]["num_traced"]) >= 1
    assert all(r["true_label"] == r["predicted_label"] for r in inputs)
