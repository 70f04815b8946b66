"""Bulyan: MultiKrum selection, then a per-coordinate trimmed mean around the median."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Bulyan, Strategy
from torch import Tensor

from tracefl.aggregators.base import (
    Aggregator,
    Decomposition,
    floating_keys,
    zero_residual,
)
from tracefl.aggregators.multikrum import selected_clients
from tracefl.config import TraceFLConfig


class BulyanAggregator(Aggregator):
    """Flower ``Bulyan`` (El Mhamdi et al., 2018).

    With ``K`` replies and ``f`` malicious nodes (Flower skips the round when
    ``K < 4f + 3``): stage 1 selects ``theta = K - 2f`` clients ``S`` with the
    strategy's selection rule (MultiKrum); stage 2, per coordinate, averages the
    ``beta = theta - 2f`` values of ``S`` closest to their median (Flower's
    ``np.argpartition`` on ``|theta_k - median|``).

    Shares, per coordinate: ``A_k = 1 / beta`` for the clients that survive both
    stages at that coordinate, 0 otherwise; ``r = 0``. Stage 2 is replayed with
    Flower's exact NumPy operations, so among equidistant values the same ones
    are kept.

    Precision: float32 (median, distances and mean in the clients' dtype).
    """

    name = "bulyan"
    keys = ("num-malicious-nodes",)

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``Bulyan`` with ``f`` and its default MultiKrum selection."""
        return Bulyan(**common, num_malicious_nodes=cfg.num_malicious_nodes)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        if not isinstance(strategy, Bulyan):
            raise TypeError(f"bulyan needs a Flower Bulyan, got {type(strategy)}")
        f, num = strategy.num_malicious_nodes, len(clients)
        if num < 4 * f + 3:
            raise ValueError(
                f"bulyan: {num} clients < 4f + 3 = {4 * f + 3}; Flower skipped this "
                "round's aggregation, there is nothing to decompose"
            )
        theta = num - 2 * f
        beta = theta - 2 * f
        chosen = selected_clients(strategy.selection_rule, clients, f, theta)
        keys = floating_keys(clients[0])
        per_client: list[dict[str, Tensor]] = [{} for _ in clients]
        for key in keys:
            layer_stack = np.stack(
                [clients[k][key].detach().cpu().numpy() for k in chosen]
            )
            median = np.median(layer_stack, axis=0)
            diffs = np.abs(layer_stack - median)
            closest = np.argpartition(diffs, beta - 1, axis=0)[:beta]
            kept = torch.from_numpy(closest)
            for k in range(num):
                per_client[k][key] = torch.zeros(median.shape, dtype=torch.float64)
            for position, k in enumerate(chosen):
                per_client[k][key] = (kept == position).any(dim=0).double() / beta
        return tuple(per_client), zero_residual(clients[0], keys)
