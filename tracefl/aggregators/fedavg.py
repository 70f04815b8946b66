"""FedAvg: the data-weighted average of the client models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.serverapp.strategy import FedAvg, Strategy
from torch import Tensor

from tracefl.aggregators.base import (
    Aggregator,
    Decomposition,
    data_shares,
    floating_keys,
    scalar_shares,
    zero_residual,
)
from tracefl.config import TraceFLConfig


class FedAvgAggregator(Aggregator):
    """Flower ``FedAvg`` (McMahan et al., 2017).

    Shares: ``A_k = p_k = n_k / sum_j n_j`` (0-d, every coordinate), ``r = 0``.

    Precision: Flower multiplies each client's arrays by the Python float
    ``p_k`` and accumulates in place, so the aggregate has the clients' dtype
    (float32 for float32 models).
    """

    name = "fedavg"
    keys = ()

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedAvg`` with the sampling arguments."""
        return FedAvg(**common)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        keys = floating_keys(clients[0])
        shares = scalar_shares(data_shares(num_examples), keys)
        return shares, zero_residual(clients[0], keys)
