"""The one signature every analysis step has."""

from __future__ import annotations

from typing import Protocol

from tracefl.analysis.context import RoundContext


class AnalysisStep(Protocol):
    """A step of the per-round analysis: reads and extends a :class:`RoundContext`."""

    #: Short name, used in logs and timings.
    name: str

    def __call__(self, ctx: RoundContext) -> None:
        """Run on one round."""
