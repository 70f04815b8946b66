"""The aggregator interface: Flower's strategy for a fusion, and its decomposition.

An :class:`Aggregator` is what one ``fusion`` run-config value names. It builds
Flower's own strategy (TraceFL never re-implements an aggregation) and writes
the global model that strategy produced in a round as ::

    theta_t = sum_k A_k * theta_k + r                                 (1)

(see :mod:`tracefl.attribution.fused_round`), from Flower's formula and the
server state the strategy held right before ``aggregate_train``. The residual
``r`` is computed from the formula (previous model, momentum, optimiser state),
never as ``theta_t - sum_k A_k theta_k``: the provenance wrapper compares (1)
with Flower's aggregate and attributes whatever is left (DP noise, float
rounding) to the ``server`` pseudo-client.

Call order per round (the wrapper's job)::

    strategy = aggregator.build(cfg, sampling_arguments(cfg))
    ...configure_train(...)                       # Flower stores theta_{t-1}
    before = aggregator.snapshot(strategy)        # right before aggregation
    arrays, _ = strategy.aggregate_train(rnd, replies)
    shares, residual = aggregator.decompose(strategy, rnd, before, clients, n)

``strategy`` is always the object :meth:`Aggregator.build` returned (the inner
strategy when a DP wrapper is around it), and ``clients`` are the replies'
arrays exactly as that strategy received them (after DP clipping), *all*
entries: Krum-type selections measure distances over every array Flower sees,
integer buffers included, so they are reproduced only from the full replies.
Shares and residual cover the floating entries only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from tracefl.attribution import StateDict
from tracefl.config import TraceFLConfig

Decomposition = tuple[tuple[StateDict, ...], StateDict]


def sampling_arguments(cfg: TraceFLConfig) -> dict[str, Any]:
    """The strategy arguments every fusion shares (``common`` of :meth:`build`)."""
    return {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes,
        "min_available_nodes": cfg.min_available_nodes,
    }


class Aggregator(ABC):
    """One fusion: Flower's strategy and the decomposition (1) of its aggregate.

    Subclasses set :attr:`name` and :attr:`keys`, implement :meth:`build` and
    :meth:`_decompose` and, when the aggregation reads server state that
    ``aggregate_train`` overwrites, :meth:`snapshot`. Their docstring states the
    share formula.
    """

    name: ClassVar[str]
    """The run-config ``fusion`` value, e.g. ``"fedadam"``."""
    keys: ClassVar[tuple[str, ...]]
    """The run-config keys :meth:`build` reads (besides the sampling ones)."""

    @abstractmethod
    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower strategy for this fusion, without DP.

        ``common`` holds ``fraction_train``, ``fraction_evaluate``,
        ``min_train_nodes``, ``min_evaluate_nodes``, ``min_available_nodes``
        (:func:`sampling_arguments`).
        """

    def snapshot(self, strategy: Strategy) -> object | None:
        """Server state :meth:`decompose` needs, copied right before aggregation.

        ``None`` for aggregators without server state.
        """
        return None

    def decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        """Shares ``A_k`` and residual ``r`` of the round ``strategy`` just fused.

        Parameters
        ----------
        strategy
            The strategy :meth:`build` returned, after its ``aggregate_train``.
        server_round
            The round passed to ``aggregate_train`` (FedAdam's bias correction).
        before
            What :meth:`snapshot` returned right before ``aggregate_train``.
        clients
            ``K`` replies' state dicts as the strategy received them, in the same
            order and with all entries (floating and integer).
        num_examples
            ``K`` positive ``num-examples`` the replies reported (Flower's weights).

        Returns
        -------
        shares, residual
            ``K`` dicts ``A_k`` (per floating key, a float64 tensor broadcastable
            to the entry: 0-d for a per-client scalar) and ``r`` (float64, full
            shape) such that Flower's aggregate equals ``sum_k A_k * theta_k + r``
            up to Flower's own float rounding.

        Raises
        ------
        ValueError
            Inconsistent clients (count, keys, shapes), non-positive
            ``num_examples`` or a non-finite floating entry (named).
        """
        _check_clients(clients, num_examples)
        return self._decompose(strategy, server_round, before, clients, num_examples)

    @abstractmethod
    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        """:meth:`decompose` on validated inputs."""


# ----------------------------------------------------------------- helpers
def floating_keys(state: Mapping[str, Tensor]) -> list[str]:
    """Keys of the floating-point entries, in the state dict's order."""
    return [k for k, v in state.items() if v.is_floating_point()]


def data_shares(num_examples: Sequence[int]) -> list[float]:
    """``p_k = n_k / sum(n)``: Flower's FedAvg weights (``w / total_weight``)."""
    total = float(sum(num_examples))
    return [n / total for n in num_examples]


def scalar_shares(
    weights: Sequence[float], keys: Sequence[str]
) -> tuple[StateDict, ...]:
    """Per-client 0-d float64 shares, the same for every key."""
    return tuple(
        {key: torch.tensor(float(w), dtype=torch.float64) for key in keys}
        for w in weights
    )


def zero_residual(state: Mapping[str, Tensor], keys: Sequence[str]) -> StateDict:
    """Float64 zeros of each entry's shape (aggregators with no server term)."""
    return {key: torch.zeros(state[key].shape, dtype=torch.float64) for key in keys}


def stacked(clients: Sequence[Mapping[str, Tensor]], key: str) -> Tensor:
    """``(K, *shape)`` stack of one entry, in the clients' dtype, on the CPU."""
    return torch.stack([c[key].detach().cpu() for c in clients])


def as_float64(array: np.ndarray | Tensor) -> Tensor:
    """A NumPy array of Flower's state, or a tensor, as a float64 CPU tensor."""
    if isinstance(array, Tensor):
        return array.detach().cpu().double()
    return torch.from_numpy(np.array(array, dtype=np.float64, copy=True))


def _check_clients(
    clients: Sequence[Mapping[str, Tensor]], num_examples: Sequence[int]
) -> None:
    """Raise ``ValueError`` naming the client/key that breaks the contract."""
    if len(clients) < 1:
        raise ValueError("decompose needs at least one client")
    if len(num_examples) != len(clients):
        raise ValueError(
            f"num_examples has {len(num_examples)} entries for {len(clients)} clients"
        )
    for k, n in enumerate(num_examples):
        if not n > 0:
            raise ValueError(f"num_examples[{k}] = {n!r} must be positive")
    first = clients[0]
    for k, client in enumerate(clients):
        if list(client) != list(first):
            diff = sorted(set(client) ^ set(first))[:3]
            raise ValueError(
                f"clients[{k}] keys differ from clients[0]'s (order or e.g. {diff})"
            )
        for key, value in client.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"clients[{k}]['{key}'] has shape {tuple(value.shape)}, "
                    f"clients[0] {tuple(first[key].shape)}"
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"clients[{k}]['{key}'] has non-finite values")
