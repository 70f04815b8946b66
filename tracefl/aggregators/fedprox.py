"""FedProx: FedAvg's aggregation; the proximal term lives in the clients' loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import FedProx, Strategy

from tracefl.aggregators.fedavg import FedAvgAggregator
from tracefl.config import TraceFLConfig


class FedProxAggregator(FedAvgAggregator):
    """Flower ``FedProx`` (Li et al., 2020).

    Shares: as FedAvg, ``A_k = p_k = n_k / sum_j n_j``, ``r = 0``: the server
    averages exactly as FedAvg; ``proximal-mu`` only adds
    ``mu/2 * ||w - theta_{t-1}||^2`` to each client's loss (Flower sends it in the
    train config; TraceFL's clients read it from the run config).

    Precision: float32, as FedAvg.
    """

    name = "fedprox"
    keys = ("proximal-mu",)

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedProx`` with ``proximal_mu = proximal-mu``."""
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
