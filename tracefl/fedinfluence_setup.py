"""Fed-Influence settings from the run config, shared by the ClientApp and server.

Both sides must track the same layers with the same ``N_s``; they build the
settings from the same run config with this one function.
"""

from __future__ import annotations

from torch import nn

from tracefl.config import TraceFLConfig
from tracefl.fedinfluence import FedInfluenceSettings, LocalSGD, default_layers


def fedinfluence_settings(cfg: TraceFLConfig, model: nn.Module) -> FedInfluenceSettings:
    """The run's :class:`FedInfluenceSettings` (empty layers: the last Linear)."""
    names = tuple(n.strip() for n in cfg.fedinfluence_layers.split(",") if n.strip())
    return FedInfluenceSettings(
        layers=names or default_layers(model),
        num_samples=cfg.fedinfluence_samples,
        lwet=cfg.fedinfluence_lwet,
        memory_budget_bytes=int(cfg.fedinfluence_memory_budget_mb * 2**20),
    )


def local_sgd(cfg: TraceFLConfig) -> LocalSGD:
    """The clients' optimiser as Fed-Influence's recursion models it."""
    return LocalSGD(
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=cfg.proximal_mu if cfg.fusion == "fedprox" else 0.0,
    )
