"""FedAdagrad: FedAvg followed by an Adagrad step on the server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedAdagrad, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from tracefl.aggregators.fedopt import FedOptAggregator
from tracefl.config import TraceFLConfig


class FedAdagradAggregator(FedOptAggregator):
    """Flower ``FedAdagrad`` (Reddi et al., 2021).

    Flower fixes ``beta_1 = beta_2 = 0``: ``m_t = delta_t``,
    ``v_t = v_{t-1} + delta_t^2``, step ``eta_t = eta``.

    Shares (v_t held fixed at its post-update value, see
    :mod:`tracefl.aggregators.fedopt`): ``A_k = G p_k`` per coordinate,
    ``G = eta / (sqrt(v_t) + tau)``; residual ``r = (1 - G) theta_{t-1}``.

    Precision: float32 (Python-float factors on float32 arrays).
    """

    name = "fedadagrad"
    keys = ("eta", "tau")

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedAdagrad``; ``eta_l`` (only logged) is TraceFL's ``lr``."""
        return FedAdagrad(**common, eta=cfg.eta, eta_l=cfg.lr, tau=cfg.tau)

    def step_size(self, strategy: FedOpt, server_round: int) -> float:
        """``eta``."""
        return float(strategy.eta)
