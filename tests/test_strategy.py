"""ProvenanceStrategy: validates replies, fuses with any strategy, decomposes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.server.superlink.linkstate.utils import (
    create_message_error_unavailable_res_message,
)
from flwr.serverapp.strategy import FedAvg

from tests.replies import NodeListGrid, array_record, error_reply, train_reply
from tracefl.aggregators.fedavg import FedAvgAggregator
from tracefl.strategy import FusionCapture, ProvenanceStrategy, RoundOutcome

pytestmark = pytest.mark.usefixtures("task_identity")


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
    }


def make(
    min_train_nodes: int = 1, **kwargs: object
) -> tuple[ProvenanceStrategy, list[RoundOutcome]]:
    seen: list[RoundOutcome] = []
    aggregator = FedAvgAggregator()
    capture = FusionCapture(
        FedAvg(min_train_nodes=min_train_nodes, min_available_nodes=1), aggregator
    )
    strategy = ProvenanceStrategy(
        capture,
        capture=capture,
        aggregator=aggregator,
        num_classes=3,
        min_train_nodes=min_train_nodes,
        on_round=seen.append,
        **kwargs,
    )
    return strategy, seen


def configure(strategy: ProvenanceStrategy, nodes: list[int], rnd: int = 1) -> None:
    messages = strategy.configure_train(
        rnd, array_record(model(99)), ConfigRecord(), NodeListGrid(nodes)
    )
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(nodes)


def test_fuses_exactly_the_valid_replies_and_decomposes_fedavg() -> None:
    strategy, seen = make()
    sizes = {0: 10, 3: 30, 5: 60}
    arrays = {pid: model(pid) for pid in sizes}
    configure(strategy, [100 + p for p in sizes])
    replies = [train_reply(p, arrays[p], num_examples=n) for p, n in sizes.items()]
    agg, _ = strategy.aggregate_train(1, list(reversed(replies)))

    total = sum(sizes.values())
    for key in ("w", "b"):
        expected = sum(arrays[p][key].astype(np.float64) * n for p, n in sizes.items())
        np.testing.assert_allclose(agg[key].numpy(), expected / total, rtol=1e-6)
    (out,) = seen
    assert [r.partition_id for r in out.accepted] == [0, 3, 5]
    assert [r.num_examples for r in out.accepted] == [10, 30, 60]
    assert out.failure is None and not (out.rejected or out.failed or out.timed_out)
    fused = out.fused
    assert fused is not None and fused.client_ids == (
        "client-0",
        "client-3",
        "client-5",
    )
    assert fused.data_share == pytest.approx((0.1, 0.3, 0.6))
    np.testing.assert_array_equal(fused.previous["w"].numpy(), model(99)["w"])
    recon = fused.reconstruct()
    for key in ("w", "b"):
        assert torch.allclose(recon[key], fused.aggregate[key].double(), atol=1e-12)
    assert out.unexplained is not None and out.unexplained < 1e-6
    assert fused.noise is None
    assert set(out.global_state) == {"w", "b"}
    # The attribution record was stripped before the strategy aggregated.
    assert all(set(m.content) == {"arrays", "metrics"} for m in replies)


def test_aggregate_does_not_depend_on_reply_order() -> None:
    sizes = {0: 7, 1: 13, 2: 29, 3: 31}
    arrays = {pid: model(10 + pid) for pid in sizes}
    results = []
    for order in (list(sizes), list(reversed(sizes))):
        strategy, _ = make()
        configure(strategy, [100 + p for p in sizes])
        agg, _ = strategy.aggregate_train(
            1, [train_reply(p, arrays[p], num_examples=sizes[p]) for p in order]
        )
        results.append(agg["w"].numpy().tobytes())
    assert results[0] == results[1]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda v: {**v, "w": np.full((3, 4), np.nan, np.float32)}, "non-finite"),
        (lambda v: {**v, "b": np.zeros(5, np.float32)}, "has shape (5,)"),
        (lambda v: {**v, "b": v["b"].astype(np.float64)}, "dtype float64"),
        (lambda v: {"w": v["w"]}, "missing ['b']"),
        (lambda v: {**v, "extra": v["b"]}, "unexpected ['extra']"),
    ],
)
def test_bad_model_is_excluded_and_named(corrupt, reason: str) -> None:
    strategy, seen = make()
    configure(strategy, [100, 101])
    good = model(1)
    agg, _ = strategy.aggregate_train(
        1,
        [
            train_reply(0, good, num_examples=5),
            train_reply(1, corrupt(model(2)), num_examples=5),
        ],
    )
    np.testing.assert_allclose(agg["w"].numpy(), good["w"], rtol=1e-6)
    (out,) = seen
    assert [r.partition_id for r in out.accepted] == [0]
    (problem,) = out.rejected
    assert problem.partition_id == 1 and problem.node_id == 101
    assert "client 1 (node 101)" in problem.reason and reason in problem.reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"label_counts": [5, 0]}, "is not 3 non-negative integers"),
        ({"label_counts": [3, 1, 0]}, "add up to 4 but 'num-examples' = 5"),
        ({"label_counts": [6, -1, 0]}, "non-negative"),
        ({"num_partitions": 1}, "not below 'num-partitions' = 1"),
    ],
)
def test_bad_metadata_is_excluded_and_named(kwargs: dict, reason: str) -> None:
    strategy, seen = make()
    configure(strategy, [100, 101])
    strategy.aggregate_train(
        1,
        [
            train_reply(0, model(0), num_examples=5),
            train_reply(1, model(1), num_examples=5, **kwargs),
        ],
    )
    (problem,) = seen[0].rejected
    assert reason in problem.reason


def test_duplicate_partition_and_foreign_federation_are_rejected() -> None:
    strategy, seen = make()
    configure(strategy, [100, 200, 300])
    strategy.aggregate_train(
        1,
        [
            train_reply(0, model(0), num_examples=5, node_id=100),
            train_reply(0, model(1), num_examples=5, node_id=200),
            train_reply(1, model(2), num_examples=5, node_id=300, num_partitions=4),
        ],
    )
    reasons = sorted(p.reason for p in seen[0].rejected)
    assert any("partition 0 already replied this round" in r for r in reasons)
    assert any("'num-partitions' = 4 but the federation has 10" in r for r in reasons)
    assert [r.node_id for r in seen[0].accepted] == [100]


def test_error_replies_and_missing_replies_are_recorded() -> None:
    strategy, seen = make()
    configure(strategy, [100, 101, 102])
    strategy.aggregate_train(
        1, [train_reply(0, model(0), num_examples=5), error_reply(101, "boom")]
    )
    (out,) = seen
    assert out.sampled_nodes and len(out.sampled_nodes) == 3
    assert [p.node_id for p in out.failed] == [101]
    assert "boom" in out.failed[0].reason
    assert out.timed_out == (102,)


def test_superlink_error_reply_is_matched_to_the_node_it_stands_for() -> None:
    """The SuperLink answers for an unavailable node from its own node id.

    Flower's grids give each pushed message its id in place; the SuperLink's
    "node unavailable" reply (built here by Flower's own function) names that
    id in ``reply_to_message_id``, and its ``src_node_id`` is the SuperLink's.
    """
    strategy, seen = make()
    messages = list(
        strategy.configure_train(
            1, array_record(model(99)), ConfigRecord(), NodeListGrid([100, 101])
        )
    )
    for i, msg in enumerate(messages):  # as InMemoryGrid.push_messages does
        msg.metadata.__dict__["_message_id"] = f"id-{i}"
    dead = next(m for m in messages if m.metadata.dst_node_id == 101)
    unavailable = create_message_error_unavailable_res_message(
        dead.metadata, "node_unavail"
    )
    assert unavailable.metadata.src_node_id != 101
    strategy.aggregate_train(1, [train_reply(0, model(0), num_examples=5), unavailable])
    (out,) = seen
    assert [p.node_id for p in out.failed] == [101]
    assert "node 101" in out.failed[0].reason
    assert "Node Unavailable" in out.failed[0].reason
    assert out.timed_out == ()


def test_too_few_valid_replies_fail_the_round_without_aggregating() -> None:
    strategy, seen = make(min_train_nodes=2)
    configure(strategy, [100, 101])
    bad = {**model(1), "w": np.full((3, 4), np.inf, np.float32)}
    agg, metrics = strategy.aggregate_train(
        1,
        [train_reply(0, model(0), num_examples=5), train_reply(1, bad, num_examples=5)],
    )
    assert agg is None and metrics is None
    (out,) = seen
    assert out.fused is None
    assert out.failure == (
        "1 valid replies of 2 sampled clients, fewer than min-train-nodes = 2"
    )


def test_only_the_current_round_is_kept() -> None:
    strategy, seen = make()
    configure(strategy, [100], rnd=1)
    strategy.aggregate_train(1, [train_reply(0, model(0), num_examples=5)])
    configure(strategy, [107], rnd=2)
    agg, _ = strategy.aggregate_train(2, [train_reply(7, model(7), num_examples=5)])
    assert [r.partition_id for r in seen[1].accepted] == [7]
    np.testing.assert_allclose(agg["w"].numpy(), model(7)["w"], rtol=1e-6)
    assert list(strategy._sent) == []
