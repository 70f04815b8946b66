"""Build real Flower train messages and replies for strategy-level tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from tracefl.reply import train_reply_content


def array_record(values: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def train_request(node_id: int, server_round: int = 1) -> Message:
    return Message(
        content=RecordDict({"config": ConfigRecord({"server-round": server_round})}),
        dst_node_id=node_id,
        message_type="train",
    )


def train_reply(
    partition_id: int,
    values: Mapping[str, np.ndarray],
    *,
    num_examples: int,
    num_partitions: int = 10,
    num_classes: int = 3,
    node_id: int | None = None,
    label_counts: list[int] | None = None,
) -> Message:
    """A valid reply of ``partition_id`` (labels: all ``num_examples`` in class 0)."""
    counts = label_counts or [num_examples] + [0] * (num_classes - 1)
    content = train_reply_content(
        array_record(values),
        num_examples=num_examples,
        train_loss=0.5,
        partition_id=partition_id,
        num_partitions=num_partitions,
        label_counts=np.asarray(counts),
    )
    node = 100 + partition_id if node_id is None else node_id
    return Message(content=content, reply_to=train_request(node))


def error_reply(node_id: int, reason: str = "ClientApp raised") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=train_request(node_id))


class NodeListGrid(Grid):
    """A Grid that only knows its node ids (what strategies sample from).

    Strategies are tested on their configure/aggregate methods; message
    transport is not exercised here (the end-to-end tests do that).
    """

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], timeout: float | None = None
    ) -> Iterable[Message]:
        raise NotImplementedError
