"""The train-reply schema round-trips and names every problem."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from tests.replies import array_record, train_reply, train_request
from tracefl.reply import (
    ARRAYS,
    ATTRIBUTION,
    METRICS,
    ReplyRejectedError,
    read_train_reply,
    strip_for_aggregation,
    train_reply_content,
)

pytestmark = pytest.mark.usefixtures("task_identity")

VALUES = {"w": np.ones((2, 2), np.float32), "step": np.array([3], np.int64)}


def test_round_trip() -> None:
    msg = train_reply(4, VALUES, num_examples=7, label_counts=[2, 0, 5])
    rec = read_train_reply(msg, array_record(VALUES), num_classes=3)
    assert (rec.partition_id, rec.num_partitions, rec.node_id) == (4, 10, 104)
    assert rec.num_examples == 7 and rec.train_loss == 0.5
    assert rec.label_counts.tolist() == [2, 0, 5] and rec.client_id == "client-4"
    assert rec.extras == {}


def test_extra_records_are_kept_aside_and_stripped() -> None:
    content = train_reply_content(
        array_record(VALUES),
        num_examples=1,
        train_loss=0.0,
        partition_id=0,
        num_partitions=1,
        label_counts=np.array([1]),
        extra={"fed-influence": ConfigRecord({"n": 3})},
    )
    msg = Message(content=content, reply_to=train_request(5))
    rec = read_train_reply(msg, array_record(VALUES), num_classes=1)
    assert list(rec.extras) == ["fed-influence"]
    strip_for_aggregation(msg)
    assert sorted(msg.content) == [ARRAYS, METRICS]
    with pytest.raises(ValueError, match="reserved"):
        train_reply_content(
            array_record(VALUES),
            num_examples=1,
            train_loss=0.0,
            partition_id=0,
            num_partitions=1,
            label_counts=np.array([1]),
            extra={ARRAYS: ConfigRecord({})},
        )


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (ARRAYS, "no ArrayRecord 'arrays'"),
        (METRICS, "no MetricRecord 'metrics'"),
        (ATTRIBUTION, "no ConfigRecord 'attribution'"),
    ],
)
def test_missing_record_is_named(drop: str, message: str) -> None:
    msg = train_reply(0, VALUES, num_examples=1, num_classes=1)
    del msg.content[drop]
    with pytest.raises(ReplyRejectedError, match=message):
        read_train_reply(msg, array_record(VALUES), num_classes=1)


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({}, "'num-examples' = None is not an integer >= 1"),
        ({"num-examples": 0}, "'num-examples' = 0"),
        ({"num-examples": 2.5}, "'num-examples' = 2.5"),
    ],
)
def test_bad_num_examples_is_named(metrics: dict, message: str) -> None:
    msg = train_reply(0, VALUES, num_examples=1, num_classes=1)
    msg.content[METRICS] = MetricRecord(metrics)
    with pytest.raises(ReplyRejectedError, match=message):
        read_train_reply(msg, array_record(VALUES), num_classes=1)


def test_missing_partition_id_is_named() -> None:
    msg = train_reply(0, VALUES, num_examples=1, num_classes=1)
    msg.content[ATTRIBUTION] = ConfigRecord({"num-partitions": 1})
    with pytest.raises(ReplyRejectedError, match="node 100: 'partition-id' = None"):
        read_train_reply(msg, array_record(VALUES), num_classes=1)
    empty = Message(content=RecordDict({}), reply_to=train_request(3))
    with pytest.raises(ReplyRejectedError, match="node 3"):
        read_train_reply(empty, array_record(VALUES), num_classes=1)
