"""Input selection and localization metrics on hand-built cases."""

from __future__ import annotations

import numpy as np
import torch

from tracefl import localization as loc

# Three participants, four labels. Label 3 is held by nobody.
COUNTS = np.array(
    [
        [5, 0, 2, 0],  # client 0
        [5, 1, 0, 0],  # client 1 (ties client 0 on label 0)
        [0, 9, 1, 0],  # client 2
    ]
)


def test_paper_metric_uses_min_count() -> None:
    traced = np.array([0, 1, 2, 0, 2])
    labels = np.array([0, 1, 1, 2, 3])
    assert loc.paper_correct(traced, labels, COUNTS, 1).tolist() == [
        True,
        True,
        True,
        True,
        False,
    ]
    assert loc.paper_correct(traced, labels, COUNTS, 2).tolist() == [
        True,
        False,
        True,
        True,
        False,
    ]


def test_strict_metric_ties_and_label_held_by_nobody() -> None:
    traced = np.array([0, 1, 2, 1, 2, 0, 1])
    labels = np.array([0, 0, 0, 1, 1, 3, 3])
    # label 0: clients 0 and 1 tie at 5 -> both correct, client 2 wrong.
    # label 1: client 2 holds most. label 3: nobody holds it -> always wrong.
    assert loc.strict_correct(traced, labels, COUNTS).tolist() == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
    ]


def test_random_baselines_are_expectations_over_participants() -> None:
    labels = np.array([0, 1, 2, 3])
    np.testing.assert_allclose(
        loc.paper_random_baseline(labels, COUNTS, 1), [2 / 3, 2 / 3, 2 / 3, 0.0]
    )
    np.testing.assert_allclose(
        loc.strict_random_baseline(labels, COUNTS), [2 / 3, 1 / 3, 1 / 3, 0.0]
    )
    # The baseline is exactly the mean of the metric over all possible answers.
    for label in range(4):
        lab = np.full(3, label)
        every = loc.strict_correct(np.arange(3), lab, COUNTS).mean()
        assert every == loc.strict_random_baseline(lab[:1], COUNTS)[0]


def test_single_participant() -> None:
    counts = np.array([[3, 0]])
    labels = np.array([0, 1])
    traced = np.zeros(2, dtype=int)
    assert loc.paper_correct(traced, labels, counts, 1).tolist() == [True, False]
    assert loc.strict_correct(traced, labels, counts).tolist() == [True, False]
    assert loc.paper_random_baseline(labels, counts, 1).tolist() == [1.0, 0.0]


def test_topk_hits() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2], [0.6, 0.3, 0.1]])
    ranking = loc.rank_clients(probs)
    assert ranking.tolist() == [[2, 1, 0], [0, 1, 2], [0, 1, 2]]
    labels = np.array([0, 2, 1])  # best: {0,1}, {0}, {2}
    assert loc.strict_topk_hits(ranking, labels, COUNTS, 1).tolist() == [
        False,
        True,
        False,
    ]
    assert loc.strict_topk_hits(ranking, labels, COUNTS, 2).tolist() == [
        True,
        True,
        False,
    ]
    assert loc.strict_topk_hits(ranking, labels, COUNTS, 3).tolist() == [
        True,
        True,
        True,
    ]


def test_select_correct_inputs_caps_per_label_and_total() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 0])
    preds = torch.tensor([0, 1, 0, 1, 1, 2, 0, 3, 0])
    idx = loc.select_correct_inputs(
        labels, preds, [0, 1, 2], per_label=2, max_inputs=100
    )
    assert idx.tolist() == [0, 2, 3, 4, 5]
    assert (labels[idx] == preds[idx]).all()
    assert 3 not in labels[idx].tolist()  # label not held by participants
    capped = loc.select_correct_inputs(labels, preds, [0, 1, 2], 2, max_inputs=3)
    assert len(capped) == 3
    assert loc.select_correct_inputs(labels, preds, [], 2, 10).size == 0


def test_select_faulty_inputs_matches_flip_map_only() -> None:
    labels = torch.tensor([1, 1, 2, 2, 3, 0, 1])
    preds = torch.tensor([0, 1, 0, 5, 0, 0, 0])
    idx = loc.select_faulty_inputs(labels, preds, {1: 0, 2: 0}, max_inputs=10)
    assert idx.tolist() == [0, 2, 6]  # true label 3 -> 0 is not in the flip map
    assert loc.select_faulty_inputs(labels, preds, {1: 0, 2: 0}, 2).tolist() == [0, 2]
    assert loc.faulty_random_baseline(1, 4) == 0.25
