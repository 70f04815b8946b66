"""Attribution methods built on the provenance engine (Flower-free).

:class:`~tracefl.attribution.fused_round.FusedRound` is the contract between
the aggregators (which produce it every round) and the methods (which read it).
"""

from .fused_round import FusedRound, StateDict, floating_entries

__all__ = ["FusedRound", "StateDict", "floating_entries"]
