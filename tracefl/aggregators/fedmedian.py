"""FedMedian: the per-coordinate median of the client models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.serverapp.strategy import FedMedian, Strategy
from torch import Tensor

from tracefl.aggregators.base import Aggregator, Decomposition
from tracefl.aggregators.ranks import window_decomposition
from tracefl.config import TraceFLConfig


class FedMedianAggregator(Aggregator):
    """Flower ``FedMedian`` (Yin et al., 2018): ``np.median`` over the clients.

    Shares, per coordinate: odd ``K``, all weight on the median value; even
    ``K``, 1/2 on each of the two middle values (``np.median`` averages them).
    A value held by ``d`` tied clients splits its weight equally among them
    (:mod:`tracefl.aggregators.ranks`): ``A_k = c_k / (w d_k)`` with window
    ``w = 1`` (odd) or 2 (even), ``c_k`` the middle slots equal to ``theta_k``.
    ``r = 0``. Without ties: one-hot on the median client (odd ``K``), 1/2 on the
    two middle clients (even ``K``). The shares ignore ``num-examples``, as
    Flower does.

    Precision: float32 (``np.median`` keeps the clients' dtype).
    """

    name = "fedmedian"
    keys = ()

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``FedMedian`` with the sampling arguments."""
        return FedMedian(**common)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        num = len(clients)
        low, high = (
            (num // 2, num // 2 + 1) if num % 2 else (num // 2 - 1, num // 2 + 1)
        )
        return window_decomposition(clients, low, high)
