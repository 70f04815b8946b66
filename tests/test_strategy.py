"""The strategy keeps exactly the round's replies and aggregates as FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from tracefl.client_app import ATTRIBUTION_KEY
from tracefl.strategy import ClientRecord, TraceFLFedAvg

pytestmark = pytest.mark.usefixtures("task_identity")


def reply(partition_id: int, n: int, arrays: dict[str, np.ndarray]) -> Message:
    request = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=100 + partition_id,
        message_type="train",
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0}),
            ATTRIBUTION_KEY: ConfigRecord(
                {"partition-id": partition_id, "label-counts": [n, 0, partition_id]}
            ),
        }
    )
    return Message(content=content, reply_to=request)


def client_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
    }


def test_keeps_exactly_the_rounds_replies_and_averages_by_num_examples() -> None:
    seen: list[tuple[int, list[ClientRecord], ArrayRecord]] = []
    strategy = TraceFLFedAvg(
        on_round_end=lambda r, arrays, recs: seen.append((r, list(recs), arrays))
    )
    sizes = {0: 10, 3: 30, 5: 60}
    arrays = {pid: client_arrays(pid) for pid in sizes}
    replies = [reply(pid, n, arrays[pid]) for pid, n in reversed(sizes.items())]
    agg, _ = strategy.aggregate_train(1, replies)

    total = sum(sizes.values())
    for key in ("w", "b"):
        expected = sum(arrays[p][key].astype(np.float64) * n for p, n in sizes.items())
        got = agg[key].numpy()
        np.testing.assert_allclose(got, expected / total, rtol=1e-6)

    assert len(seen) == 1
    server_round, records, hook_arrays = seen[0]
    assert server_round == 1 and hook_arrays is agg
    assert [r.partition_id for r in records] == [0, 3, 5]
    assert [r.num_examples for r in records] == [10, 30, 60]
    assert [r.node_id for r in records] == [100, 103, 105]
    assert records[1].label_counts.tolist() == [30, 0, 3]
    np.testing.assert_array_equal(records[2].arrays["w"].numpy(), arrays[5]["w"])

    # Next round: only that round's replies are kept (memory bounded to a round).
    agg2, _ = strategy.aggregate_train(2, [reply(7, 5, client_arrays(7))])
    assert [r.partition_id for r in strategy.round_records] == [7]
    np.testing.assert_allclose(agg2["w"].numpy(), client_arrays(7)["w"], rtol=1e-6)
    assert len(seen) == 2 and [r.partition_id for r in seen[1][1]] == [7]


def test_aggregate_does_not_depend_on_reply_order() -> None:
    sizes = {0: 7, 1: 13, 2: 29, 3: 31}
    arrays = {pid: client_arrays(10 + pid) for pid in sizes}
    forward = [reply(p, n, arrays[p]) for p, n in sizes.items()]
    backward = [reply(p, n, arrays[p]) for p, n in reversed(sizes.items())]
    a, _ = TraceFLFedAvg().aggregate_train(1, forward)
    b, _ = TraceFLFedAvg().aggregate_train(1, backward)
    assert a["w"].numpy().tobytes() == b["w"].numpy().tobytes()
