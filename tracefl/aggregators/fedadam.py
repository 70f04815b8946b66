"""FedAdam: FedAvg followed by a bias-corrected Adam step on the server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAdam, Strategy
from flwr.serverapp.strategy.fedopt import FedOpt

from tracefl.aggregators.fedopt import FedOptAggregator
from tracefl.config import TraceFLConfig


class FedAdamAggregator(FedOptAggregator):
    """Flower ``FedAdam`` (Reddi et al., 2021).

    ``v_t = beta_2 v_{t-1} + (1 - beta_2) delta_t^2`` and Flower's bias-corrected
    step ``eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))``.

    Shares (v_t held fixed at its post-update value, see
    :mod:`tracefl.aggregators.fedopt`): ``A_k = G (1 - beta_1) p_k`` per
    coordinate, ``G = eta_t / (sqrt(v_t) + tau)``; residual
    ``r = (1 - G (1 - beta_1)) theta_{t-1} + G beta_1 m_{t-1}``.

    Precision: Flower's ``eta_t`` is a NumPy float64 scalar, so the aggregate is
    **float64** (and so is ``theta_{t-1}`` from round 2 on); the FedAvg average
    inside is in the clients' dtype (float32).
    """

    name = "fedadam"
    keys = ("eta", "beta-1", "beta-2", "tau")

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedAdam``; ``eta_l`` (only logged by Flower) is TraceFL's ``lr``."""
        return FedAdam(
            **common,
            eta=cfg.eta,
            eta_l=cfg.lr,
            beta_1=cfg.beta_1,
            beta_2=cfg.beta_2,
            tau=cfg.tau,
        )

    def step_size(self, strategy: FedOpt, server_round: int) -> float:
        """Flower's bias-corrected ``eta_norm`` for this round."""
        return float(
            strategy.eta
            * np.sqrt(1 - np.power(strategy.beta_2, server_round + 1.0))
            / (1 - np.power(strategy.beta_1, server_round + 1.0))
        )
