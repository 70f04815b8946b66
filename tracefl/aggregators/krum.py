"""Krum: the one client whose model is closest to its nearest neighbours."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import Krum, Strategy

from tracefl.aggregators.multikrum import MultiKrumAggregator
from tracefl.config import TraceFLConfig


class KrumAggregator(MultiKrumAggregator):
    """Flower ``Krum`` (Blanchard et al., 2017): MultiKrum with ``m = 1``.

    Shares: one-hot on the selected client ``k*`` (lowest Krum score),
    ``A_{k*} = 1`` on every coordinate, 0 for the others; ``r = 0``.

    Precision: float32 (the selected client's arrays times 1.0).
    """

    name = "krum"
    keys = ("num-malicious-nodes",)

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``Krum`` with ``f``."""
        return Krum(**common, num_malicious_nodes=cfg.num_malicious_nodes)
