"""FedAvg that keeps the current round's client models for provenance.

:class:`TraceFLFedAvg` aggregates exactly as Flower's ``FedAvg`` and, for the
current round only, keeps each replying client's model, ``num-examples``,
partition id and label counts (:class:`ClientRecord`). Memory is bounded to one
round: the records are replaced at every aggregation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from tracefl.client_app import ATTRIBUTION_KEY


@dataclass(frozen=True)
class ClientRecord:
    """One client's reply in a round, as fused into the global model.

    Attributes
    ----------
    arrays
        The client's model as received (clipped in place first when server-side
        DP clipping is on).
    label_counts
        (num_classes,) int64 histogram of the labels the client trained on.
    """

    partition_id: int
    node_id: int
    num_examples: int
    label_counts: np.ndarray
    arrays: ArrayRecord

    @property
    def client_id(self) -> str:
        """Stable, human-readable id used in results: ``client-<partition-id>``."""
        return f"client-{self.partition_id}"

    @classmethod
    def from_reply(cls, msg: Message) -> ClientRecord:
        """Read a client's train reply (see :mod:`tracefl.client_app`)."""
        attribution = msg.content[ATTRIBUTION_KEY]
        metrics = msg.content["metrics"]
        return cls(
            partition_id=int(attribution["partition-id"]),
            node_id=int(msg.metadata.src_node_id),
            num_examples=int(metrics["num-examples"]),
            label_counts=np.asarray(attribution["label-counts"], dtype=np.int64),
            arrays=msg.content["arrays"],
        )


def _partition_order(msg: Message) -> tuple[int, int]:
    """Sort key: error replies last, others by partition id."""
    if msg.has_error():
        return (1, int(msg.metadata.src_node_id))
    return (0, int(msg.content[ATTRIBUTION_KEY]["partition-id"]))


PostAggregationHook = Callable[[int, ArrayRecord, list[ClientRecord]], None]


class TraceFLFedAvg(FedAvg):
    """Flower ``FedAvg`` that keeps this round's :class:`ClientRecord` list.

    Parameters
    ----------
    on_round_end
        Called after aggregation as ``hook(round, global_arrays, records)``.
        Leave it ``None`` when a DP wrapper owns the hook (the wrapper adds noise
        after this aggregation, and provenance must see the noised model).
    **kwargs
        Passed to ``FedAvg`` (fractions, minimum node counts, ...).
    """

    def __init__(
        self, *, on_round_end: PostAggregationHook | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.on_round_end = on_round_end
        self.round_records: list[ClientRecord] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the valid replies, then aggregate exactly as FedAvg.

        Replies are ordered by partition id first: FedAvg's floating-point sum
        then no longer depends on which client answered first, so a run is
        reproducible bit for bit.
        """
        replies = sorted(replies, key=_partition_order)
        self.round_records = [
            ClientRecord.from_reply(msg) for msg in replies if not msg.has_error()
        ]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.on_round_end is not None:
            self.on_round_end(server_round, arrays, self.round_records)
        return arrays, metrics


class _HookAfterDP:
    """Call the post-aggregation hook on the DP wrapper's final (noised) model.

    Mixed in front of Flower's fixed-clipping DP wrappers: they clip the replies
    in place, call the inner :class:`TraceFLFedAvg` (which records the clipped
    client models) and add noise; the hook then sees what was actually fused.
    """

    strategy: TraceFLFedAvg

    def __init__(
        self,
        strategy: TraceFLFedAvg,
        on_round_end: PostAggregationHook,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        num_sampled_clients: int,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            strategy, noise_multiplier, clipping_norm, num_sampled_clients
        )
        self.on_round_end = on_round_end

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, aggregate and noise as Flower's wrapper does, then run the hook."""
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is not None:
            self.on_round_end(server_round, arrays, self.strategy.round_records)
        return arrays, metrics


class ServerSideDPWithHook(_HookAfterDP, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper plus the TraceFL hook."""


class ClientSideDPWithHook(_HookAfterDP, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper plus the TraceFL hook.

    Clients clip with Flower's ``fixedclipping_mod`` (see ``client_app.py``).
    """
