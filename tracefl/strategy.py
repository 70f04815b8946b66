"""Provenance around any Flower strategy: validate, fuse, decompose, hand over.

:class:`ProvenanceStrategy` wraps the strategy Flower drives (any Message-API
strategy, or one of Flower's DP wrappers around it) without subclassing it.
Every training round it

1. remembers the global arrays it sends (``theta_{t-1}``) and which nodes were
   sampled;
2. checks every reply against the schema and the global model
   (:func:`tracefl.reply.read_train_reply`): error replies, rejected replies
   (with the reason) and nodes that never answered are recorded, and only the
   accepted replies reach the strategy;
3. lets the wrapped strategy aggregate (DP clipping and noise included);
4. writes the result as ``theta_t = sum_k A_k * theta_k + r``
   (:class:`~tracefl.attribution.FusedRound`) with the aggregator's shares,
   from the replies *as fused* (after clipping) and the aggregate *as produced*
   (after noise): whatever the aggregator's formula does not explain (DP
   noise, float rounding) is added to the residual and measured;
5. calls the round hook with a :class:`RoundOutcome`, also for rounds that
   produced no aggregate.

Memory is bounded to one round: nothing of earlier rounds is kept here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from tracefl.aggregators import Aggregator
from tracefl.attribution import FusedRound, StateDict
from tracefl.reply import (
    ARRAYS,
    ClientRecord,
    ReplyRejectedError,
    read_train_reply,
    reply_partition_id,
    strip_for_aggregation,
)

log = logging.getLogger("tracefl")


class FusionCapture(Strategy):
    """Sits right around the aggregator's strategy (inside any DP wrapper).

    Copies each reply's arrays exactly as the strategy receives them (after DP
    clipping; FedMedian, FedTrimmedAvg and Bulyan empty the replies while they
    aggregate) and snapshots the aggregator's server state right before
    ``aggregate_train``; delegates everything else.
    """

    def __init__(self, inner: Strategy, aggregator: Aggregator) -> None:
        super().__init__()
        self.inner = inner
        self.aggregator = aggregator
        self.received: list[StateDict] = []
        self.before: object | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the aggregator's strategy."""
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Capture the replies and the server state, then aggregate."""
        replies = list(replies)
        self.received = [msg.content[ARRAYS].to_torch_state_dict() for msg in replies]
        self.before = self.aggregator.snapshot(self.inner)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the aggregator's strategy."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to the aggregator's strategy."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Delegate to the aggregator's strategy."""
        self.inner.summary()


@dataclass(frozen=True)
class ReplyProblem:
    """A reply that was not fused: an error reply or a rejected one."""

    node_id: int
    partition_id: int | None
    reason: str


@dataclass(frozen=True)
class RoundOutcome:
    """Everything a training round produced, as the analysis needs it.

    Attributes
    ----------
    sampled_nodes
        Node ids the strategy sent a train message to.
    accepted
        Replies that were fused, by partition id.
    rejected, failed
        Replies excluded for failing validation, and error replies.
    timed_out
        Sampled nodes whose reply never arrived (``round-timeout``).
    fused
        The round's decomposition, or ``None`` when no aggregate was produced.
    global_state
        The produced global model's whole state dict (buffers included).
    client_states
        The fused clients' whole state dicts as the aggregator received them
        (after any DP clipping), in the order of ``accepted``.
    failure
        Why no aggregate was produced, else ``None``.
    unexplained
        ``max |aggregate - (sum_k A_k theta_k + r)| / max |aggregate|`` before
        the remainder was moved into the residual: DP noise when DP is on,
        float rounding otherwise.
    excluded
        Valid replies of ``exclude-partitions`` that were dropped before
        aggregation, as if those clients never took part.

    """

    server_round: int
    sampled_nodes: tuple[int, ...]
    accepted: tuple[ClientRecord, ...]
    rejected: tuple[ReplyProblem, ...]
    failed: tuple[ReplyProblem, ...]
    timed_out: tuple[int, ...]
    fused: FusedRound | None
    failure: str | None
    global_state: StateDict | None = None
    client_states: tuple[StateDict, ...] = ()
    unexplained: float | None = None
    excluded: tuple[ReplyProblem, ...] = ()


RoundHook = Callable[[RoundOutcome], None]


class ProvenanceStrategy(Strategy):
    """Wrap ``strategy`` so that every round is validated and decomposed.

    Parameters
    ----------
    strategy
        What aggregates: ``capture``, or a Flower DP wrapper around it.
    capture
        The :class:`FusionCapture` around the aggregator's own strategy (where
        its server state lives).
    aggregator
        Gives the shares ``A_k`` and residual ``r`` of that strategy.
    num_classes
        Length of the clients' label histograms.
    min_train_nodes
        Fewer accepted replies than this and the round is not aggregated.
    on_round
        Called with every round's :class:`RoundOutcome`.
    expected_partitions
        The federation size if known (``num-clients``); else the first accepted
        reply's ``num-partitions`` fixes it and later replies must agree.
    noise_expected
        DP noise is added after aggregation: the unexplained part is noise.
    required_records
        Extra reply records every client must send (e.g. ``fedinfluence``).
    excluded_partitions
        Partitions whose valid replies are dropped before aggregation (the
        counterfactual runs of the retraining ground truth).

    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        capture: FusionCapture,
        aggregator: Aggregator,
        num_classes: int,
        min_train_nodes: int,
        on_round: RoundHook,
        expected_partitions: int | None = None,
        noise_expected: bool = False,
        required_records: tuple[str, ...] = (),
        excluded_partitions: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.capture = capture
        self.aggregator = aggregator
        self.num_classes = num_classes
        self.min_train_nodes = min_train_nodes
        self.on_round = on_round
        self.num_partitions = expected_partitions
        self.noise_expected = noise_expected
        self.required_records = required_records
        self.excluded_partitions = frozenset(excluded_partitions)
        #: Per round: the model sent and the messages (their ids are set in
        #: place when the grid pushes them; replies name them in reply_to).
        self._sent: dict[int, tuple[ArrayRecord, tuple[Message, ...]]] = {}
        #: (shape, dtype) of every entry of the first model sent: the schema
        #: replies are checked against (Flower may return integer buffers or a
        #: whole server-optimiser aggregate as float64; clients load it into
        #: their own dtypes and reply in those).
        self.schema: ArrayRecord | None = None

    # ------------------------------------------------------------ delegation
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure as the wrapped strategy does; remember what was sent."""
        messages = list(
            self.strategy.configure_train(server_round, arrays, config, grid)
        )
        self._sent = {server_round: (arrays, tuple(messages))}
        if self.schema is None:
            self.schema = arrays
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate to the wrapped strategy."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Delegate to the wrapped strategy."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Delegate to the wrapped strategy."""
        self.strategy.summary()

    # ------------------------------------------------------------- training
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, aggregate with the wrapped strategy, decompose, report."""
        sent, instructions = self._sent.pop(server_round)
        sampled = tuple(int(m.metadata.dst_node_id) for m in instructions)
        assert self.schema is not None
        accepted, messages, rejected, failed, replied = self._screen(
            replies, self.schema, _destinations(instructions)
        )
        accepted, messages, excluded = self._drop_excluded(accepted, messages)
        timed_out = tuple(n for n in sampled if n not in replied)
        outcome = RoundOutcome(
            server_round=server_round,
            sampled_nodes=sampled,
            accepted=tuple(accepted),
            rejected=tuple(rejected),
            failed=tuple(failed),
            timed_out=timed_out,
            fused=None,
            failure=None,
            excluded=excluded,
        )
        for problem in (*rejected, *failed):
            log.warning("Round %d: reply not fused: %s", server_round, problem.reason)
        if timed_out:
            log.warning(
                "Round %d: no reply from node(s) %s within round-timeout",
                server_round,
                ", ".join(map(str, timed_out)),
            )
        if len(accepted) < self.min_train_nodes:
            reason = (
                f"{len(accepted)} valid replies of {len(sampled)} sampled clients, "
                f"fewer than min-train-nodes = {self.min_train_nodes}"
            )
            self.on_round(dataclasses.replace(outcome, failure=reason))
            return None, None

        arrays, metrics = self.strategy.aggregate_train(server_round, messages)
        if arrays is None:
            reason = (
                f"the '{self.aggregator.name}' strategy produced no aggregate from "
                f"{len(accepted)} valid replies"
            )
            self.on_round(dataclasses.replace(outcome, failure=reason))
            return None, metrics
        states = tuple(self.capture.received)
        fused, unexplained = self._decompose(
            server_round, sent, accepted, states, arrays
        )
        self.on_round(
            dataclasses.replace(
                outcome,
                fused=fused,
                global_state=arrays.to_torch_state_dict(),
                client_states=states,
                unexplained=unexplained,
            )
        )
        return arrays, metrics

    # ---------------------------------------------------------------- helpers
    def _screen(
        self,
        replies: Iterable[Message],
        schema: ArrayRecord,
        destinations: Mapping[str, int],
    ) -> tuple[
        list[ClientRecord],
        list[Message],
        list[ReplyProblem],
        list[ReplyProblem],
        set[int],
    ]:
        """Split replies into accepted (sorted by partition id) and problems."""
        accepted: list[tuple[ClientRecord, Message]] = []
        rejected: list[ReplyProblem] = []
        failed: list[ReplyProblem] = []
        replied: set[int] = set()
        for msg in replies:
            # An error reply the SuperLink makes for an unavailable node comes
            # from the SuperLink's own node id: the message it answers says
            # which node it stands for.
            node = destinations.get(
                msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id)
            )
            replied.add(node)
            if msg.has_error():
                failed.append(
                    ReplyProblem(
                        node,
                        None,
                        f"node {node}: error reply (code {msg.error.code}): "
                        f"{msg.error.reason}",
                    )
                )
                continue
            try:
                record = read_train_reply(
                    msg, schema, self.num_classes, self.required_records
                )
                self._check_federation(record, accepted)
            except ReplyRejectedError as err:
                rejected.append(ReplyProblem(node, reply_partition_id(msg), str(err)))
                continue
            accepted.append((record, msg))
        accepted.sort(key=lambda pair: pair[0].partition_id)
        for _, msg in accepted:
            strip_for_aggregation(msg)
        return (
            [rec for rec, _ in accepted],
            [msg for _, msg in accepted],
            rejected,
            failed,
            replied,
        )

    # --- exclude-partitions (ground truth by retraining): begin
    def _drop_excluded(
        self, accepted: list[ClientRecord], messages: list[Message]
    ) -> tuple[list[ClientRecord], list[Message], tuple[ReplyProblem, ...]]:
        """Drop the valid replies of ``excluded_partitions`` before aggregation.

        The client trained (its seed and data are untouched, so the others'
        training is the same as in the run with it); its reply just never
        reaches the aggregator, the analysis or the fused round.
        """
        if not self.excluded_partitions:
            return accepted, messages, ()
        kept = [
            (rec, msg)
            for rec, msg in zip(accepted, messages, strict=True)
            if rec.partition_id not in self.excluded_partitions
        ]
        dropped = tuple(
            ReplyProblem(
                rec.node_id,
                rec.partition_id,
                f"client {rec.partition_id} (node {rec.node_id}): excluded by "
                "exclude-partitions",
            )
            for rec in accepted
            if rec.partition_id in self.excluded_partitions
        )
        for problem in dropped:
            log.info("Reply not fused: %s", problem.reason)
        return [rec for rec, _ in kept], [msg for _, msg in kept], dropped

    # --- exclude-partitions: end

    def _check_federation(
        self, record: ClientRecord, accepted: list[tuple[ClientRecord, Message]]
    ) -> None:
        """One reply per partition, and every client in the same federation."""
        if self.num_partitions is None:
            self.num_partitions = record.num_partitions
        who = f"client {record.partition_id} (node {record.node_id})"
        if record.num_partitions != self.num_partitions:
            raise ReplyRejectedError(
                f"{who}: 'num-partitions' = {record.num_partitions} but the "
                f"federation has {self.num_partitions} partitions"
            )
        if any(rec.partition_id == record.partition_id for rec, _ in accepted):
            raise ReplyRejectedError(
                f"{who}: partition {record.partition_id} already replied this round"
            )

    def _decompose(
        self,
        server_round: int,
        sent: ArrayRecord,
        records: list[ClientRecord],
        states: tuple[StateDict, ...],
        aggregate: ArrayRecord,
    ) -> tuple[FusedRound, float]:
        """The round's FusedRound; the unexplained share goes to the residual."""
        keys = [k for k, v in states[0].items() if v.is_floating_point()]
        num_examples = [r.num_examples for r in records]
        shares, residual = self.aggregator.decompose(
            self.capture.inner, server_round, self.capture.before, states, num_examples
        )
        sent_state = sent.to_torch_state_dict()
        global_state = aggregate.to_torch_state_dict()
        previous = {k: sent_state[k] for k in keys}
        produced = {k: global_state[k] for k in keys}
        clients = [{k: s[k] for k in keys} for s in states]
        rest: StateDict = {}
        worst, scale = 0.0, 0.0
        for key, value in produced.items():
            explained = residual[key].double() + sum(
                a[key].double() * c[key].double()
                for a, c in zip(shares, clients, strict=True)
            )
            rest[key] = value.double() - explained
            worst = max(worst, float(rest[key].abs().max()))
            scale = max(scale, float(value.abs().max()))
        unexplained = worst / scale if scale > 0 else worst
        fused = FusedRound(
            server_round=server_round,
            aggregator=self.aggregator.name,
            client_ids=tuple(r.client_id for r in records),
            num_examples=tuple(num_examples),
            previous=previous,
            clients=tuple(clients),
            aggregate=produced,
            shares=tuple(shares),
            residual={k: residual[k].double() + rest[k] for k in keys},
            noise=rest if self.noise_expected else None,
        )
        return fused, unexplained


def _destinations(messages: Sequence[Message]) -> dict[str, int]:
    """Message id -> destination node of the messages the grid pushed."""
    return {
        m.metadata.message_id: int(m.metadata.dst_node_id)
        for m in messages
        if m.metadata.message_id
    }
