"""FedAvgM: FedAvg followed by a server SGD step with momentum."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvgM, Strategy
from torch import Tensor

from tracefl.aggregators.base import (
    Aggregator,
    Decomposition,
    as_float64,
    data_shares,
    floating_keys,
    scalar_shares,
    zero_residual,
)
from tracefl.config import TraceFLConfig


@dataclass(frozen=True)
class ServerMomentumState:
    """FedAvgM's state before a round's aggregation.

    Attributes
    ----------
    current
        ``x = theta_{t-1}`` as Flower keeps it (``current_arrays``), per key.
    momentum
        ``m_{t-1}`` per key, or ``None`` before the first momentum step.
    """

    current: dict[str, np.ndarray]
    momentum: dict[str, np.ndarray] | None


class FedAvgMAggregator(Aggregator):
    """Flower ``FedAvgM`` (Hsu et al., 2019), no Nesterov.

    Flower: ``a = sum_k p_k theta_k`` (FedAvg), pseudo-gradient ``g = x - a``,
    momentum ``m_t = mu * m_{t-1} + g`` (``m_1 = g``; none when ``mu = 0``),
    ``theta_t = x - lr * m_t``. This is linear in the clients, so exactly

    Shares: ``A_k = lr * p_k`` (0-d), residual
    ``r = (1 - lr) * x - lr * mu * m_{t-1}`` (the ``m_{t-1}`` term only once a
    momentum step exists). With ``lr = 1, mu = 0`` Flower skips the server step:
    ``A_k = p_k``, ``r = 0``.

    Precision: float32 (Python-float factors on float32 arrays).
    """

    name = "fedavgm"
    keys = ("server-learning-rate", "server-momentum")

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedAvgM`` with the server learning rate and momentum."""
        return FedAvgM(
            **common,
            server_learning_rate=cfg.server_learning_rate,
            server_momentum=cfg.server_momentum,
        )

    def snapshot(self, strategy: Strategy) -> ServerMomentumState:
        """Copy ``x`` and ``m_{t-1}`` (``aggregate_train`` replaces both)."""
        if not isinstance(strategy, FedAvgM):
            raise TypeError(f"fedavgm needs a Flower FedAvgM, got {type(strategy)}")
        if strategy.current_arrays is None:
            raise ValueError(
                "FedAvgM has no current arrays: call configure_train before snapshot"
            )
        keys = list(strategy.current_arrays.keys())
        current = {k: a.numpy() for k, a in strategy.current_arrays.items()}
        momentum = (
            None
            if strategy.momentum_vector is None
            else {
                k: np.array(m, copy=True)
                for k, m in zip(keys, strategy.momentum_vector, strict=True)
            }
        )
        return ServerMomentumState(current=current, momentum=momentum)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        if not isinstance(strategy, FedAvgM):
            raise TypeError(f"fedavgm needs a Flower FedAvgM, got {type(strategy)}")
        keys = floating_keys(clients[0])
        p = data_shares(num_examples)
        if not strategy.server_opt:  # Flower returns the FedAvg aggregate as is
            return scalar_shares(p, keys), zero_residual(clients[0], keys)
        if not isinstance(before, ServerMomentumState):
            raise TypeError(
                f"fedavgm needs its snapshot (ServerMomentumState), got {type(before)}"
            )
        lr, mu = strategy.server_learning_rate, strategy.server_momentum
        residual = {}
        for key in keys:
            r = (1.0 - lr) * as_float64(before.current[key])
            if mu > 0.0 and before.momentum is not None:
                r = r - lr * mu * as_float64(before.momentum[key])
            residual[key] = r
        return scalar_shares([lr * pk for pk in p], keys), residual
