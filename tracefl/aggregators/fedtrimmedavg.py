"""FedTrimmedAvg: the per-coordinate mean after cutting both tails."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.serverapp.strategy import FedTrimmedAvg, Strategy
from torch import Tensor

from tracefl.aggregators.base import Aggregator, Decomposition
from tracefl.aggregators.ranks import window_decomposition
from tracefl.config import TraceFLConfig


class FedTrimmedAvgAggregator(Aggregator):
    """Flower ``FedTrimmedAvg`` (Yin et al., 2018), ``beta = trim-beta``.

    Flower cuts ``c = int(beta * K)`` values at each end per coordinate and
    averages the ``K - 2c`` kept ones (unweighted).

    Shares, per coordinate: uniform ``1 / (K - 2c)`` on the kept clients, 0 on
    the cut ones; a value held by ``d`` tied clients splits its weight equally
    among them (:mod:`tracefl.aggregators.ranks`): ``A_k = c_k / ((K - 2c) d_k)``
    with ``c_k`` the kept slots equal to ``theta_k``. ``r = 0``.

    Precision: float32 (``np.mean`` of the float32 kept values).
    """

    name = "fedtrimmedavg"
    keys = ("trim-beta",)

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedTrimmedAvg`` with ``beta = trim-beta``."""
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        if not isinstance(strategy, FedTrimmedAvg):
            raise TypeError(
                f"fedtrimmedavg needs a Flower FedTrimmedAvg, got {type(strategy)}"
            )
        num = len(clients)
        cut = int(strategy.beta * num)  # Flower's trim_mean: int(cut_fraction * n)
        return window_decomposition(clients, cut, num - cut)
