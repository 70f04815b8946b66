"""Which inputs to trace, and how to score a traced client against ground truth.

Pure NumPy/PyTorch, no Flower: given the clients' label histograms (what they
reported), decide whether a traced client is "responsible" for a prediction.

* paper metric: the traced client holds at least ``label_min_count`` training
  samples of the input's label (the paper's lenient definition);
* strict metric: the traced client holds the most samples of that label among
  the round's participants (ties: any of the tied counts as correct);
* random baselines: the expected value of each metric when the traced client is
  drawn uniformly at random from the participants - the chance level a
  localization accuracy must be compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor


def select_correct_inputs(
    labels: Tensor,
    predictions: Tensor,
    eligible_labels: Sequence[int],
    per_label: int,
    max_inputs: int,
) -> np.ndarray:
    """Indices of correctly predicted inputs, at most ``per_label`` per label.

    Parameters
    ----------
    labels, predictions
        (N,) true and predicted labels of the server test split.
    eligible_labels
        Labels held by at least one of this round's participants.
    per_label, max_inputs
        Per-label cap and overall cap (the paper uses 10 inputs per round).

    Returns
    -------
    np.ndarray
        Sorted int64 indices; labels are visited in ascending order and the
        lowest indices of each label are taken, so the selection is deterministic.
    """
    labels_np = labels.cpu().numpy()
    correct = labels_np == predictions.cpu().numpy()
    chosen: list[np.ndarray] = []
    for label in sorted(set(int(x) for x in eligible_labels)):
        idx = np.flatnonzero(correct & (labels_np == label))[:per_label]
        chosen.append(idx)
    picked = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    return np.sort(picked[:max_inputs]).astype(np.int64)


def select_faulty_inputs(
    labels: Tensor,
    predictions: Tensor,
    flip_map: Mapping[int, int],
    max_inputs: int,
) -> np.ndarray:
    """Indices of mispredictions that match the flip map (true=source, pred=target).

    These are the inputs whose wrong prediction the faulty clients' flipped
    labels can explain; the lowest indices are taken, at most ``max_inputs``.
    """
    labels_np = labels.cpu().numpy()
    preds_np = predictions.cpu().numpy()
    mask = np.zeros(len(labels_np), dtype=bool)
    for src, dst in flip_map.items():
        mask |= (labels_np == src) & (preds_np == dst)
    return np.flatnonzero(mask)[:max_inputs].astype(np.int64)


def paper_correct(
    traced: np.ndarray, labels: np.ndarray, label_counts: np.ndarray, min_count: int
) -> np.ndarray:
    """Paper metric per input: traced client holds >= ``min_count`` of the label.

    Parameters
    ----------
    traced
        (B,) participant index traced for each input.
    labels
        (B,) true label of each input.
    label_counts
        (K, C) label histogram of each participant.
    min_count
        Samples of the label the traced client must hold to count as correct.
    """
    return label_counts[traced, labels] >= min_count


def strict_correct(
    traced: np.ndarray, labels: np.ndarray, label_counts: np.ndarray
) -> np.ndarray:
    """Strict metric per input: traced client holds the most samples of the label.

    Ties count for every tied client. A label that no participant holds has no
    responsible client, so every answer is wrong for it.
    """
    held = label_counts[:, labels]  # (K, B)
    best = held.max(axis=0)
    return (held[traced, np.arange(len(labels))] == best) & (best > 0)


def strict_topk_hits(
    ranking: np.ndarray, labels: np.ndarray, label_counts: np.ndarray, k: int
) -> np.ndarray:
    """Whether a strict-metric client is among the top-``k`` ranked clients.

    ``ranking`` is (B, K) participant indices sorted by decreasing probability.
    """
    top = ranking[:, :k]  # (B, k)
    held = label_counts[:, labels].T  # (B, K)
    best = held.max(axis=1, keepdims=True)
    hit = np.take_along_axis(held, top, axis=1) == best
    return hit.any(axis=1) & (best[:, 0] > 0)


def paper_random_baseline(
    labels: np.ndarray, label_counts: np.ndarray, min_count: int
) -> np.ndarray:
    """Per input, the chance that a uniformly random participant is paper-correct."""
    return (label_counts[:, labels] >= min_count).mean(axis=0)


def strict_random_baseline(labels: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Per input, the chance that a uniformly random participant is strict-correct."""
    held = label_counts[:, labels]
    best = held.max(axis=0)
    return ((held == best) & (best > 0)).mean(axis=0)


def faulty_random_baseline(
    num_faulty_participants: int, num_participants: int
) -> float:
    """Chance that a random participant is faulty: |faulty ∩ P| / |P|."""
    return num_faulty_participants / num_participants


def rank_clients(probs: Tensor) -> np.ndarray:
    """(B, K) participant indices sorted by decreasing probability (stable)."""
    order = torch.argsort(-probs.double(), dim=1, stable=True)
    return order.cpu().numpy()
