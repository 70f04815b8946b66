"""Input selection and localization metrics on hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
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


# ---------------------------------------------------------- separating metrics

# Four participants, three labels.
DECISIVE_COUNTS = np.array(
    [
        [9, 4, 0],  # client 0
        [6, 4, 0],  # client 1
        [0, 1, 0],  # client 2
        [3, 0, 0],  # client 3
    ]
)


def test_decisive_needs_a_lead_of_1_5x_over_the_runner_up() -> None:
    labels = np.array([0, 1, 2])
    # label 0: 9 vs 6 -> exactly 1.5x -> decisive; label 1: 4 vs 4 tie -> not;
    # label 2: nobody holds it -> not decisive.
    assert loc.decisive_inputs(labels, DECISIVE_COUNTS).tolist() == [
        True,
        False,
        False,
    ]
    assert loc.decisive_inputs(labels, DECISIVE_COUNTS, ratio=1.6).tolist() == [
        False,
        False,
        False,
    ]
    # A single participant holding the label is decisive (runner-up holds 0).
    assert loc.decisive_inputs(np.array([0, 1]), np.array([[2, 0]])).tolist() == [
        True,
        False,
    ]


def test_strict_on_decisive_reports_accuracy_chance_and_share() -> None:
    labels = np.array([0, 0, 1, 1])
    traced = np.array([0, 1, 0, 2])  # right, wrong on the decisive label 0
    score = loc.strict_on_decisive(traced, labels, DECISIVE_COUNTS)
    assert score.num_decisive == 2
    assert score.share == 0.5
    assert score.accuracy == 0.5
    assert score.chance == 0.25  # one of four participants is the largest holder
    none = loc.strict_on_decisive(traced[2:], labels[2:], DECISIVE_COUNTS)
    assert none.num_decisive == 0 and none.share == 0.0
    assert np.isnan(none.accuracy) and np.isnan(none.chance)


def test_graded_score_and_its_chance_level() -> None:
    labels = np.array([0, 0, 0, 1, 2])
    traced = np.array([0, 1, 2, 2, 0])
    np.testing.assert_allclose(
        loc.graded_score(traced, labels, DECISIVE_COUNTS),
        [1.0, 6 / 9, 0.0, 1 / 4, 0.0],
    )
    np.testing.assert_allclose(
        loc.graded_random_baseline(labels, DECISIVE_COUNTS),
        [18 / 4 / 9, 18 / 4 / 9, 18 / 4 / 9, 9 / 4 / 4, 0.0],
    )
    # The chance level is the mean graded score over every possible answer.
    for label in range(3):
        lab = np.full(4, label)
        every = loc.graded_score(np.arange(4), lab, DECISIVE_COUNTS).mean()
        assert every == pytest.approx(
            loc.graded_random_baseline(lab[:1], DECISIVE_COUNTS)[0]
        )


def test_spearman_with_counts() -> None:
    labels = np.array([0, 0, 0, 1, 2])
    scores = np.array(
        [
            [4.0, 3.0, 1.0, 2.0],  # same order as counts (9, 6, 0, 3) -> +1
            [1.0, 2.0, 4.0, 3.0],  # reversed -> -1
            [0.9, 0.1, 0.3, 0.2],  # ranks (4, 1, 3, 2) vs (4, 3, 1, 2) -> 0.2
            [1.0, 1.0, 1.0, 1.0],  # constant scores -> undefined
            [1.0, 2.0, 3.0, 4.0],  # nobody holds label 2 -> undefined
        ]
    )
    rho = loc.spearman_with_counts(scores, labels, DECISIVE_COUNTS)
    np.testing.assert_allclose(rho[:3], [1.0, -1.0, 0.2])
    assert np.isnan(rho[3]) and np.isnan(rho[4])
    # Ties get average ranks: counts of label 1 are (4, 4, 1, 0).
    tied = loc.spearman_with_counts(
        np.array([[3.0, 4.0, 2.0, 1.0]]), np.array([1]), DECISIVE_COUNTS
    )
    # ranks (3, 4, 2, 1) vs (3.5, 3.5, 2, 1): cov 4.5, var 5 and 4.5.
    assert tied[0] == pytest.approx(4.5 / np.sqrt(5 * 4.5))
    with pytest.raises(ValueError, match="participants"):
        loc.spearman_with_counts(scores[:, :3], labels, DECISIVE_COUNTS)


def test_top1_agreement() -> None:
    assert loc.top1_agreement(np.array([0, 2, 1]), np.array([0, 1, 1])).tolist() == [
        True,
        False,
        True,
    ]
    with pytest.raises(ValueError, match="shape"):
        loc.top1_agreement(np.array([0]), np.array([0, 1]))


@pytest.mark.parametrize(
    ("accuracy", "expected"),
    [
        ([0.5, 0.8, 0.895, 0.905, 0.91], [False, False, True, True, True]),
        # A dip back below the band pushes the start after the dip.
        ([0.5, 0.9, 0.85, 0.9, 0.91], [False, False, False, True, True]),
        ([0.7], [True]),
        ([0.9, 0.9, 0.9], [True, True, True]),
    ],
)
def test_converged_rounds_rule(accuracy: list[float], expected: list[bool]) -> None:
    rounds = list(range(1, len(accuracy) + 1))
    assert loc.converged_rounds(rounds, accuracy).tolist() == expected
    # Order of the rows does not matter.
    back = loc.converged_rounds(rounds[::-1], accuracy[::-1]).tolist()
    assert back == expected[::-1]


def test_converged_rounds_rejects_bad_curves() -> None:
    with pytest.raises(ValueError, match="unique"):
        loc.converged_rounds([1, 1], [0.5, 0.6])
    with pytest.raises(ValueError, match="equal-length"):
        loc.converged_rounds([1, 2], [0.5])
    with pytest.raises(ValueError, match="finite"):
        loc.converged_rounds([1, 2], [0.5, float("nan")])


def test_cell_interval_counts_cells_not_inputs() -> None:
    # Seed 0: cell (1, 0) has 3 identical correct inputs, cell (1, 1) one wrong.
    # Seed 1: cell (1, 0) one correct input, cell (2, 1) two inputs, half right.
    values = np.array([1, 1, 1, 0, 1, 1, 0], dtype=float)
    seeds = np.array([0, 0, 0, 0, 1, 1, 1])
    rounds = np.array([1, 1, 1, 1, 1, 2, 2])
    labels = np.array([0, 0, 0, 1, 0, 1, 1])
    est = loc.cell_interval(values, seeds, rounds, labels)
    cells = np.array([1.0, 0.0, 1.0, 0.5])
    assert est.num_cells == 4 and est.num_inputs == 7
    assert est.mean == pytest.approx(cells.mean())
    half = 3.182446305284263 * cells.std(ddof=1) / 2  # t_{0.975, 3}
    assert est.low == pytest.approx(cells.mean() - half)
    assert est.high == pytest.approx(cells.mean() + half)
    # Counting the 7 inputs as independent would give a narrower interval.
    assert half > 2.4469118511449692 * values.std(ddof=1) / np.sqrt(7)


def test_cell_interval_edge_cases() -> None:
    one = loc.cell_interval(np.array([1.0, 0.0]), np.zeros(2), np.ones(2), np.ones(2))
    assert one.mean == 0.5 and one.num_cells == 1
    assert np.isnan(one.low) and np.isnan(one.high)
    nan = loc.cell_interval(np.array([np.nan, 1.0]), np.zeros(2), [1, 2], [0, 0])
    assert nan.num_inputs == 1 and nan.mean == 1.0
    with pytest.raises(ValueError, match="confidence"):
        loc.cell_interval(np.ones(1), [0], [1], [0], confidence=1.0)


def test_cell_interval_is_clipped_to_the_metrics_range() -> None:
    values = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
    cells = np.arange(5)
    zeros = np.zeros(5)
    free = loc.cell_interval(values, zeros, cells, zeros)
    clipped = loc.cell_interval(values, zeros, cells, zeros, bounds=(0.0, 1.0))
    assert free.high > 1.0 and clipped.high == 1.0
    assert clipped.low == free.low and clipped.mean == free.mean == 0.8
