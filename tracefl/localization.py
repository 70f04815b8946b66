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

Metrics that separate attribution methods (issue 14):

* strict on *decisive* inputs only (the largest holder has >= 1.5x the
  runner-up's samples), with the share of decisive inputs;
* a graded score ``n_traced,c / max_k n_k,c`` and its chance level;
* Spearman's rho between a method's client scores and the clients' counts of
  the label (chance level 0);
* top-1 agreement with a reference method (exact round leave-one-out);
* converged rounds, from the global test-accuracy curve, reported apart from
  early rounds;
* across seeds, a mean with a 95% interval whose effective samples are the
  (seed, round, label) cells, not the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from scipy.stats import t as student_t
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


# ------------------------------------------------------- metrics that separate


def decisive_inputs(
    labels: np.ndarray, label_counts: np.ndarray, ratio: float = 1.5
) -> np.ndarray:
    """Per input, whether one participant clearly holds the most of the label.

    An input is *decisive* when the largest holder of its label holds at least
    ``ratio`` times as many samples as the runner-up (a runner-up holding none
    counts, a label nobody holds does not). On the other inputs "the largest
    holder" is nearly a coin toss between clients, so the strict metric says
    little about a method there.

    Parameters
    ----------
    labels
        (B,) true label of each input.
    label_counts
        (K, C) label histogram of each participant.
    ratio
        Required lead of the largest holder over the runner-up (> 1).

    Returns
    -------
    np.ndarray
        (B,) bool.
    """
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    held = np.sort(label_counts[:, labels], axis=0)  # (K, B) ascending
    best = held[-1]
    runner_up = held[-2] if held.shape[0] > 1 else np.zeros_like(best)
    return (best > 0) & (best >= ratio * runner_up)


@dataclass(frozen=True)
class DecisiveScore:
    """Strict accuracy restricted to decisive inputs.

    Attributes
    ----------
    accuracy, chance
        Mean strict correctness and strict chance level over the decisive inputs
        (NaN when there is none).
    share
        Fraction of all inputs that are decisive.
    num_decisive
        Number of decisive inputs.
    """

    accuracy: float
    chance: float
    share: float
    num_decisive: int


def strict_on_decisive(
    traced: np.ndarray,
    labels: np.ndarray,
    label_counts: np.ndarray,
    ratio: float = 1.5,
) -> DecisiveScore:
    """Strict metric and its chance level on the decisive inputs only."""
    mask = decisive_inputs(labels, label_counts, ratio)
    n = int(mask.sum())
    if n == 0:
        return DecisiveScore(float("nan"), float("nan"), 0.0, 0)
    correct = strict_correct(traced[mask], labels[mask], label_counts)
    chance = strict_random_baseline(labels[mask], label_counts)
    return DecisiveScore(
        float(correct.mean()), float(chance.mean()), float(mask.mean()), n
    )


def graded_score(
    traced: np.ndarray, labels: np.ndarray, label_counts: np.ndarray
) -> np.ndarray:
    """Per input ``n_traced,c / max_k n_k,c`` in [0, 1] (0 if nobody holds ``c``).

    Partial credit: tracing the runner-up with 90% of the leader's samples scores
    0.9 instead of the strict metric's 0.
    """
    held = label_counts[:, labels].astype(np.float64)  # (K, B)
    best = held.max(axis=0)
    mine = held[traced, np.arange(len(labels))]
    return np.divide(mine, best, out=np.zeros_like(best), where=best > 0)


def graded_random_baseline(labels: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Per input, the graded score of a uniformly random participant.

    ``mean_k n_k,c / max_k n_k,c`` (0 if nobody holds ``c``).
    """
    held = label_counts[:, labels].astype(np.float64)
    best = held.max(axis=0)
    mean = held.mean(axis=0)
    return np.divide(mean, best, out=np.zeros_like(best), where=best > 0)


def spearman_with_counts(
    scores: np.ndarray, labels: np.ndarray, label_counts: np.ndarray
) -> np.ndarray:
    """Per input, Spearman's rho between the clients' scores and label counts.

    Parameters
    ----------
    scores
        (B, K) a method's score of each participant (columns as in
        ``label_counts``; pseudo-clients such as ``server`` left out).
    labels
        (B,) true label of each input.
    label_counts
        (K, C) label histogram of each participant.

    Returns
    -------
    np.ndarray
        (B,) float64 in [-1, 1]; NaN where it is undefined (fewer than two
        participants, or all scores or all counts equal). Ties get average
        ranks. The chance level (scores independent of the counts) is 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    held = label_counts[:, labels].T.astype(np.float64)  # (B, K)
    if scores.shape != held.shape:
        raise ValueError(
            f"scores have shape {scores.shape} but there are {held.shape[1]} "
            f"participants and {held.shape[0]} labels"
        )
    rank_s = rankdata(scores, axis=1)
    rank_n = rankdata(held, axis=1)
    rank_s -= rank_s.mean(axis=1, keepdims=True)
    rank_n -= rank_n.mean(axis=1, keepdims=True)
    denom = np.sqrt((rank_s**2).sum(axis=1) * (rank_n**2).sum(axis=1))
    cov = (rank_s * rank_n).sum(axis=1)
    return np.divide(cov, denom, out=np.full(len(cov), np.nan), where=denom > 0)


def top1_agreement(traced: np.ndarray, reference_traced: np.ndarray) -> np.ndarray:
    """Per input, whether a method traces the same client as a reference (LOO)."""
    traced = np.asarray(traced)
    reference_traced = np.asarray(reference_traced)
    if traced.shape != reference_traced.shape:
        raise ValueError(
            f"traced has shape {traced.shape}, reference {reference_traced.shape}"
        )
    return traced == reference_traced


def converged_rounds(
    rounds: Sequence[int], test_accuracy: Sequence[float], tolerance: float = 0.02
) -> np.ndarray:
    """Which rounds count as converged, from the global test-accuracy curve.

    Rule: with ``a*`` the best test accuracy of the run, the converged rounds
    are the last rounds whose accuracy all stay within ``tolerance`` of ``a*``
    (every round from the first round ``t*`` such that each round ``>= t*`` has
    accuracy ``>= a* - tolerance``). Earlier rounds are *early* rounds, where
    the model still changes fast and single-round scores are larger.

    Parameters
    ----------
    rounds
        Round numbers (any order, unique).
    test_accuracy
        Global test accuracy after each of those rounds, in [0, 1].
    tolerance
        Accuracy gap to the best round still counted as converged.

    Returns
    -------
    np.ndarray
        (R,) bool, aligned with ``rounds``.
    """
    r = np.asarray(rounds)
    acc = np.asarray(test_accuracy, dtype=np.float64)
    if r.shape != acc.shape or r.ndim != 1 or len(r) == 0:
        raise ValueError(
            f"rounds {r.shape} and test_accuracy {acc.shape} must be equal-length "
            "non-empty 1-d sequences"
        )
    if len(np.unique(r)) != len(r):
        raise ValueError(f"rounds must be unique, got {r.tolist()}")
    if not np.isfinite(acc).all():
        raise ValueError(f"test_accuracy must be finite, got {acc.tolist()}")
    order = np.argsort(r)
    near = acc[order] >= acc.max() - tolerance
    # Converged from the first round after the last round that was not near.
    far = np.flatnonzero(~near)
    first = far[-1] + 1 if len(far) else 0
    mask = np.zeros(len(r), dtype=bool)
    mask[order[first:]] = True
    return mask


@dataclass(frozen=True)
class CellEstimate:
    """Mean of a per-input metric with a confidence interval over cells.

    Attributes
    ----------
    mean
        Mean over cells of the per-cell mean.
    low, high
        Bounds of the two-sided interval (Student t over cells); NaN with fewer
        than two cells.
    num_cells, num_inputs
        Effective samples (cells) and inputs behind the estimate.
    """

    mean: float
    low: float
    high: float
    num_cells: int
    num_inputs: int


def cell_interval(
    values: np.ndarray,
    seeds: np.ndarray,
    rounds: np.ndarray,
    labels: np.ndarray,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> CellEstimate:
    """Mean and interval of a per-input metric, counting (seed, round, label) cells.

    Inputs of one cell share the traced round's model and the label's holders,
    so their outcomes are strongly correlated (often identical): counting them
    as independent would make the interval far too narrow. Each cell's mean is
    one sample; the estimate is the mean of the cell means and the interval
    ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` over the ``n`` cells.

    Parameters
    ----------
    values
        (N,) per-input metric (bool or float). NaN entries (e.g. an undefined
        Spearman rho) are left out.
    seeds, rounds, labels
        (N,) the cell of each input.
    confidence
        Coverage of the interval, in (0, 1).
    bounds
        Range the metric cannot leave (``(0, 1)`` for a rate): the interval is
        clipped to it (a t-interval on few cells can overshoot).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64)
    keys = np.stack([np.asarray(seeds), np.asarray(rounds), np.asarray(labels)], axis=1)
    if keys.shape[0] != v.shape[0] or v.ndim != 1:
        raise ValueError(
            f"values {v.shape}, seeds/rounds/labels {keys.shape[0]} must align"
        )
    keep = ~np.isnan(v)
    v, keys = v[keep], keys[keep]
    if len(v) == 0:
        return CellEstimate(float("nan"), float("nan"), float("nan"), 0, 0)
    _, cell = np.unique(keys, axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    n_cells = int(cell.max()) + 1
    cell_means = np.bincount(cell, weights=v) / np.bincount(cell)
    mean = float(cell_means.mean())
    if n_cells < 2:
        return CellEstimate(mean, float("nan"), float("nan"), n_cells, len(v))
    sem = float(cell_means.std(ddof=1)) / np.sqrt(n_cells)
    half = float(student_t.ppf((1 + confidence) / 2, n_cells - 1)) * sem
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return CellEstimate(mean, low, high, n_cells, len(v))
