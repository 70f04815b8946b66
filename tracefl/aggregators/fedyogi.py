"""FedYogi: FedAvg followed by a Yogi step on the server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedYogi, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from tracefl.aggregators.fedopt import FedOptAggregator
from tracefl.config import TraceFLConfig


class FedYogiAggregator(FedOptAggregator):
    """Flower ``FedYogi`` (Reddi et al., 2021).

    ``v_t = v_{t-1} - (1 - beta_2) delta_t^2 sign(v_{t-1} - delta_t^2)``, step
    ``eta_t = eta`` (no bias correction in Flower).

    Shares (v_t held fixed at its post-update value, see
    :mod:`tracefl.aggregators.fedopt`): ``A_k = G (1 - beta_1) p_k`` per
    coordinate, ``G = eta / (sqrt(v_t) + tau)``; residual
    ``r = (1 - G (1 - beta_1)) theta_{t-1} + G beta_1 m_{t-1}``.

    Precision: float32 (Python-float factors on float32 arrays).
    """

    name = "fedyogi"
    keys = ("eta", "beta-1", "beta-2", "tau")

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedYogi``; ``eta_l`` (only logged by Flower) is TraceFL's ``lr``."""
        return FedYogi(
            **common,
            eta=cfg.eta,
            eta_l=cfg.lr,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            tau=cfg.tau,
        )

    def step_size(self, strategy: FedOpt, server_round: int) -> float:
        """``eta``: Yogi's step has no bias correction in Flower."""
        return float(strategy.eta)
