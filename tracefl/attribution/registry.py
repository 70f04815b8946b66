"""The attribution methods by name: an explicit table, nothing registered on import.

Three kinds of method:

* per-round (``paper``, ``update``, ``loo``): a :class:`RoundMethod`, created by
  :func:`create_round_method`, called as ``method.attribute(round, model,
  inputs)`` on any round;
* cross-round online (``cross-round``, ``cross-round-unweighted``): both read
  one :class:`CrossRoundOnline` that the caller keeps and feeds every round;
* cross-round cumulative (``cumulative``): a :class:`CumulativeMethod` over a
  :class:`CumulativeUpdates` store the caller keeps and feeds every round.

:func:`check_methods` validates a list of names against the state the caller
keeps, before any training.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import AttributionError
from .leave_one_out import LeaveOneOut
from .paper import PaperMethod
from .round_method import RoundMethod
from .update import UpdateMethod

#: State a method needs the caller to keep across rounds.
ONLINE_STATE = "online"
STORE_STATE = "store"


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, what it needs and what it costs.

    Attributes
    ----------
    name
        Registry name.
    state
        ``None`` (per-round), ``"online"`` (a :class:`CrossRoundOnline` fed every
        round) or ``"store"`` (a :class:`CumulativeUpdates` fed every round).
    formula
        The score of client ``k``.
    cost
        Extra work per traced round.

    """

    name: str
    state: str | None
    formula: str
    cost: str


METHODS = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            MethodSpec(
                "paper",
                None,
                "sum_l beta_l <dy/dW_l, A_k theta_k>, y = raw logit (Eq. 5-7)",
                "1 engine call (+1 for the server pseudo-client)",
            ),
            MethodSpec(
                "update",
                None,
                "<d log p(target)/d theta at theta_t, A_k Delta_k>",
                "1 engine call",
            ),
            MethodSpec(
                "loo",
                None,
                "f(theta_t) - f(theta_t without client k, re-weighted)",
                "K + 1 forward passes",
            ),
            MethodSpec(
                "cross-round",
                ONLINE_STATE,
                "sum_t <d log p(target)/d theta at theta_t, A_k^t Delta_k^t>",
                "1 engine call per round on the fixed queries",
            ),
            MethodSpec(
                "cross-round-unweighted",
                ONLINE_STATE,
                "sum_t <d log p(target)/d theta at theta_t, Delta_k^t>",
                "shares cross-round's engine call",
            ),
            MethodSpec(
                "cumulative",
                STORE_STATE,
                "<d log p(target)/d theta at theta, sum_t A_k^t Delta_k^t>",
                "K state-dict additions per round; 1 engine call per attribution",
            ),
        )
    }
)

ROUND_METHODS: MappingProxyType[str, type[RoundMethod]] = MappingProxyType(
    {"paper": PaperMethod, "update": UpdateMethod, "loo": LeaveOneOut}
)

_STATE_CLASSES = {ONLINE_STATE: "CrossRoundOnline", STORE_STATE: "CumulativeUpdates"}


def method_spec(name: str) -> MethodSpec:
    """The spec of a method by name (clear error for an unknown one)."""
    spec = METHODS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise AttributionError(
            f"unknown attribution method {name!r}; known methods: {list(METHODS)}"
        )
    return spec


def create_round_method(name: str, **options: Any) -> RoundMethod:
    """A per-round method by name, with its constructor options.

    Raises
    ------
    AttributionError
        For an unknown name, a method that keeps state across rounds, or an
        option the method does not take.
    """
    spec = method_spec(name)
    if spec.state is not None:
        raise AttributionError(
            f"method {name!r} is not a per-round method: it needs a "
            f"{_STATE_CLASSES[spec.state]} that the caller keeps and feeds every "
            "round"
        )
    cls = ROUND_METHODS[name]
    allowed = [
        p
        for p, param in inspect.signature(cls).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for option in options:
        if option not in allowed:
            raise AttributionError(
                f"method {name!r} has no option {option!r}; its options are {allowed}"
            )
    return cls(**options)


def check_methods(
    names: Sequence[str], *, keeps_online: bool, keeps_store: bool
) -> tuple[MethodSpec, ...]:
    """Validate method names against the state the caller keeps (before training).

    Parameters
    ----------
    names
        Requested method names (unique).
    keeps_online
        Whether the caller keeps a :class:`CrossRoundOnline` with fixed queries.
    keeps_store
        Whether the caller keeps a :class:`CumulativeUpdates` store.

    """
    if isinstance(names, str):
        raise AttributionError(
            f"method names must be a sequence of names, got the string {names!r}"
        )
    specs = []
    for name in names:
        spec = method_spec(name)
        if spec in specs:
            raise AttributionError(f"attribution method {name!r} is listed twice")
        kept = {ONLINE_STATE: keeps_online, STORE_STATE: keeps_store}
        if spec.state is not None and not kept[spec.state]:
            raise AttributionError(
                f"method {name!r} needs a {_STATE_CLASSES[spec.state]} kept across "
                "rounds, which the caller does not keep"
            )
        specs.append(spec)
    return tuple(specs)
