"""Attribution methods built on the provenance engine (Flower-free).

:class:`~tracefl.attribution.fused_round.FusedRound` is the contract between
the aggregators (which produce it every round) and the methods (which read it).
The methods, by registry name (see :mod:`tracefl.attribution.registry`):

* ``paper`` (:class:`PaperMethod`), ``update`` (:class:`UpdateMethod`),
  ``loo`` (:class:`LeaveOneOut`): one round's model against its clients;
* ``cross-round`` / ``cross-round-unweighted``: :class:`CrossRoundOnline`,
  whole-training scores for fixed query inputs;
* ``cumulative``: :class:`CumulativeMethod` over a :class:`CumulativeUpdates`
  store of per-client cumulative fused updates.
"""

from .cumulative import CumulativeMethod
from .engine_options import EngineOptions
from .errors import AttributionError
from .fused_round import FusedRound, StateDict, floating_entries
from .leave_one_out import LeaveOneOut, leave_one_out_state
from .online import CrossRoundOnline
from .paper import PaperMethod
from .registry import (
    METHODS,
    ROUND_METHODS,
    MethodSpec,
    check_methods,
    create_round_method,
    method_spec,
)
from .result import NOISE_ID, PSEUDO_CLIENT_IDS, SERVER_ID, AttributionResult
from .round_method import RoundMethod
from .update import UpdateMethod
from .update_store import CumulativeUpdates

__all__ = [
    "METHODS",
    "NOISE_ID",
    "PSEUDO_CLIENT_IDS",
    "ROUND_METHODS",
    "SERVER_ID",
    "AttributionError",
    "AttributionResult",
    "CrossRoundOnline",
    "CumulativeMethod",
    "CumulativeUpdates",
    "EngineOptions",
    "FusedRound",
    "LeaveOneOut",
    "MethodSpec",
    "PaperMethod",
    "RoundMethod",
    "StateDict",
    "UpdateMethod",
    "check_methods",
    "create_round_method",
    "floating_entries",
    "leave_one_out_state",
    "method_spec",
]
