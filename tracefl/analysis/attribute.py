"""Attribute the selected inputs to the clients with every enabled method."""

from __future__ import annotations

import logging
import time

from tracefl.analysis.context import RoundContext
from tracefl.analysis.fedinfluence_step import TrackFedInfluence
from tracefl.analysis.methods import MethodSuite

log = logging.getLogger("tracefl")


class Attribute:
    """Run the run's methods (and Fed-Influence, when on) on ``ctx.selected``.

    Results land in ``ctx.attributions`` by method name, each a
    :class:`~tracefl.attribution.AttributionResult` whose client columns are
    ``client-<partition-id>`` names.
    """

    name = "attribute"

    def __init__(
        self, suite: MethodSuite, fedinfluence: TrackFedInfluence | None = None
    ) -> None:
        self.suite = suite
        self.fedinfluence = fedinfluence

    def __call__(self, ctx: RoundContext) -> None:
        """Attribute ``ctx.selected`` with every method."""
        if not ctx.provenance_pending:
            return
        fused = ctx.outcome.fused
        assert fused is not None and ctx.model is not None
        log.info(
            "Round %d: %d methods on %d inputs over %d clients...",
            ctx.server_round,
            len(self.suite.names),
            len(ctx.selected),
            fused.num_clients,
        )
        inputs = ctx.test_data.select_features(ctx.selected)
        start = time.perf_counter()
        ctx.attributions.update(
            self.suite.attribute(fused, ctx.model, ctx.selected, inputs)
        )
        if self.fedinfluence is not None:
            labels = ctx.test_data.labels[ctx.selected]
            ctx.attributions["fedinfluence"] = self.fedinfluence.attribute(
                inputs, labels
            )
        ctx.row["attribution_seconds"] = round(time.perf_counter() - start, 4)
        ctx.status = "traced"
