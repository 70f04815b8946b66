"""The train reply: what a ClientApp sends and what the server accepts.

One schema for both apps. A train reply's ``RecordDict`` holds

* ``arrays`` (ArrayRecord): the trained model, same keys/shapes/dtypes as the
  global model the client received;
* ``metrics`` (MetricRecord): ``num-examples`` (int > 0, FedAvg's weight) and
  ``train-loss``; FedAvg weight-averages every value in it, which is why ids
  do not go here;
* ``attribution`` (ConfigRecord): ``partition-id``, ``num-partitions`` and
  ``label-counts`` (one int per class, summing to ``num-examples``: the labels
  the client actually trained on, after any label flipping);
* optional extra records (e.g. Fed-Influence's payload), which the server strips
  before the strategy aggregates (Flower's strategies expect exactly one
  ArrayRecord and one MetricRecord, and DP clipping would clip any ArrayRecord).

:func:`read_train_reply` checks all of it against the global model that was sent
and raises :class:`ReplyRejectedError` naming the client and the problem, so that a
bad reply is excluded from the aggregate and from provenance instead of
poisoning the federation or crashing FedAvg with a broadcast error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from tracefl.secure_aggregation import SECAGGPLUS_RECORD, refusal

ARRAYS = "arrays"
METRICS = "metrics"
ATTRIBUTION = "attribution"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
LABEL_COUNTS = "label-counts"
#: Optional record with a Fed-Influence payload (``PAYLOAD``: bytes).
FEDINFLUENCE = "fedinfluence"
PAYLOAD = "payload"
#: Records a strategy aggregates; everything else is stripped before it runs.
AGGREGATED_RECORDS = (ARRAYS, METRICS)

Record = ArrayRecord | MetricRecord | ConfigRecord


class ReplyRejectedError(ValueError):
    """A train reply that must not be aggregated; ``str()`` is the reason."""


def train_reply_content(
    arrays: ArrayRecord,
    *,
    num_examples: int,
    train_loss: float,
    partition_id: int,
    num_partitions: int,
    label_counts: np.ndarray,
    extra: Mapping[str, Record] | None = None,
) -> RecordDict:
    """The ``RecordDict`` of a train reply (see the module docstring)."""
    content: dict[str, Record] = {
        ARRAYS: arrays,
        METRICS: MetricRecord(
            {NUM_EXAMPLES: int(num_examples), TRAIN_LOSS: train_loss}
        ),
        ATTRIBUTION: ConfigRecord(
            {
                PARTITION_ID: int(partition_id),
                NUM_PARTITIONS: int(num_partitions),
                LABEL_COUNTS: [int(c) for c in np.asarray(label_counts).tolist()],
            }
        ),
    }
    for name, record in (extra or {}).items():
        if name in content:
            raise ValueError(f"extra record name {name!r} is reserved")
        content[name] = record
    return RecordDict(content)


@dataclass(frozen=True)
class ClientRecord:
    """One client's accepted train reply in a round.

    Attributes
    ----------
    label_counts
        ``(num_classes,)`` int64 histogram of the labels the client trained on.
    extras
        Records beyond the aggregated ones (e.g. a Fed-Influence payload).

    """

    partition_id: int
    num_partitions: int
    node_id: int
    num_examples: int
    train_loss: float
    label_counts: np.ndarray
    extras: dict[str, Record] = field(default_factory=dict)

    @property
    def client_id(self) -> str:
        """Stable, human-readable id used in results: ``client-<partition-id>``."""
        return client_id(self.partition_id)


def client_id(partition_id: int) -> str:
    """The result-file name of a partition's client."""
    return f"client-{partition_id}"


def reply_partition_id(msg: Message) -> int | None:
    """The partition id a reply claims, or ``None`` if it has none (errors too)."""
    if msg.has_error() or ATTRIBUTION not in msg.content.config_records:
        return None
    value = msg.content.config_records[ATTRIBUTION].get(PARTITION_ID)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_train_reply(
    msg: Message,
    expected: ArrayRecord,
    num_classes: int,
    required: tuple[str, ...] = (),
) -> ClientRecord:
    """Decode and check a train reply against the global model's schema.

    Parameters
    ----------
    msg
        A reply without an error.
    expected
        The reference keys, shapes and dtypes (the run's initial model).
    num_classes
        Length of ``label-counts``.
    required
        Extra records the run needs from every client (e.g. ``fedinfluence``).

    Raises
    ------
    ReplyRejectedError
        A SecAgg+ masked reply (no individual model to attribute), missing record
        or key, wrong type, a count out of range, an array with
        another key set, shape or dtype than the global model, or NaN/Inf.

    """
    node = int(msg.metadata.src_node_id)
    content = msg.content
    if SECAGGPLUS_RECORD in content.config_records:
        raise ReplyRejectedError(
            refusal(
                f"node {node}: the reply carries SecAgg+ masked records "
                f"('{SECAGGPLUS_RECORD}') instead of the client's model"
            )
        )
    for name, kind, records in (
        (ARRAYS, "ArrayRecord", content.array_records),
        (METRICS, "MetricRecord", content.metric_records),
        (ATTRIBUTION, "ConfigRecord", content.config_records),
    ):
        if name not in records:
            raise ReplyRejectedError(f"node {node}: reply has no {kind} '{name}'")
    attribution = content.config_records[ATTRIBUTION]
    partition_id = _int_field(attribution, PARTITION_ID, node, minimum=0)
    num_partitions = _int_field(attribution, NUM_PARTITIONS, node, minimum=1)
    who = f"client {partition_id} (node {node})"
    if partition_id >= num_partitions:
        raise ReplyRejectedError(
            f"{who}: '{PARTITION_ID}' = {partition_id} is not below "
            f"'{NUM_PARTITIONS}' = {num_partitions}"
        )
    counts = attribution.get(LABEL_COUNTS)
    if (
        not isinstance(counts, list)
        or len(counts) != num_classes
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
        or any(c < 0 for c in counts)
    ):
        raise ReplyRejectedError(
            f"{who}: '{LABEL_COUNTS}' = {counts!r} is not {num_classes} "
            "non-negative integers (one per class)"
        )
    metrics = content.metric_records[METRICS]
    num_examples = _int_field(metrics, NUM_EXAMPLES, node, minimum=1, who=who)
    if sum(counts) != num_examples:
        raise ReplyRejectedError(
            f"{who}: '{LABEL_COUNTS}' add up to {sum(counts)} but "
            f"'{NUM_EXAMPLES}' = {num_examples}"
        )
    loss = metrics.get(TRAIN_LOSS, float("nan"))
    arrays = content.array_records[ARRAYS]
    check_arrays(arrays, expected, who)
    extras = {name: record for name, record in content.items() if name not in _KNOWN}
    return ClientRecord(
        partition_id=partition_id,
        num_partitions=num_partitions,
        node_id=node,
        num_examples=num_examples,
        train_loss=float(loss) if isinstance(loss, int | float) else float("nan"),
        label_counts=np.asarray(counts, dtype=np.int64),
        extras=extras,
    )


_KNOWN = (ARRAYS, METRICS, ATTRIBUTION)


def check_arrays(arrays: ArrayRecord, expected: ArrayRecord, who: str) -> None:
    """Reject ``arrays`` unless its keys/shapes/dtypes match ``expected``; finite."""
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    if missing or extra:
        raise ReplyRejectedError(
            f"{who}: model keys differ from the global model's "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for key in expected:
        got, want = arrays[key], expected[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ReplyRejectedError(
                f"{who}: parameter '{key}' has shape {tuple(got.shape)}, the global "
                f"model's is {tuple(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise ReplyRejectedError(
                f"{who}: parameter '{key}' has dtype {got.dtype}, the global "
                f"model's is {want.dtype}"
            )
        values = got.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ReplyRejectedError(
                f"{who}: parameter '{key}' has {bad} non-finite value(s) (NaN/Inf)"
            )


def strip_for_aggregation(msg: Message) -> None:
    """Remove every record but ``arrays`` and ``metrics`` from a reply, in place."""
    for name in [n for n in msg.content if n not in AGGREGATED_RECORDS]:
        del msg.content[name]


def _int_field(
    record: Mapping[str, object],
    key: str,
    node: int,
    *,
    minimum: int,
    who: str | None = None,
) -> int:
    value = record.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ReplyRejectedError(
            f"{who or f'node {node}'}: '{key}' = {value!r} is not an integer "
            f">= {minimum}"
        )
    return value
