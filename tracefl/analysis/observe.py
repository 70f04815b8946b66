"""Feed the cross-round methods every round that produced an aggregate."""

from __future__ import annotations

from tracefl.analysis.context import RoundContext
from tracefl.analysis.methods import MethodSuite


class ObserveRound:
    """Add the round to the cross-round accumulator and the cumulative store.

    Runs on every round with an aggregate (traced or not), so that whole-training
    scores include every round; a no-op when no cross-round method is enabled.
    """

    name = "observe"

    def __init__(self, suite: MethodSuite) -> None:
        self.suite = suite

    def __call__(self, ctx: RoundContext) -> None:
        """Observe ``ctx.outcome.fused`` at the round's global model."""
        if ctx.outcome.fused is None or ctx.model is None:
            return
        self.suite.observe(ctx.outcome.fused, ctx.model)
