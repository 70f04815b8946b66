"""Fed-Influence (Xue et al., AAAI) next to TraceFL: its state across rounds.

The estimator must see every round in order (its per-client state moves also
for clients that sat a round out), so this step runs on every round that
produced an aggregate, traced or not, and records what it cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tracefl.analysis.context import RoundContext
from tracefl.config import TraceFLConfig, sampled_train_nodes
from tracefl.fedinfluence import (
    CostEstimate,
    FedInfluence,
    GradientPayload,
    check_settings,
    local_iterations,
)
from tracefl.fedinfluence_setup import fedinfluence_settings
from tracefl.reply import FEDINFLUENCE, PAYLOAD


class TrackFedInfluence:
    """Keep Fed-Influence's per-client estimators up to date, round by round.

    Built before training: the settings are checked on the run's model against
    the memory budget (raises ``FedInfluenceConfigError`` naming the setting).
    """

    name = "fedinfluence"

    def __init__(
        self,
        cfg: TraceFLConfig,
        model_factory: Callable[[], nn.Module],
        federation_size: int,
    ) -> None:
        model = model_factory()
        settings = fedinfluence_settings(cfg, model)
        self.cost: CostEstimate = check_settings(
            model,
            settings,
            iterations=local_iterations(
                cfg.max_per_client_data_size, cfg.batch_size, cfg.local_epochs
            ),
            num_clients=federation_size,
            participants=sampled_train_nodes(cfg, federation_size),
        )
        self.estimator = FedInfluence(model, settings)

    def __call__(self, ctx: RoundContext) -> None:
        """Advance the estimators with this round's fused clients and payloads."""
        fused = ctx.outcome.fused
        if fused is None:
            return
        payloads = {
            rec.client_id: GradientPayload.from_bytes(rec.extras[FEDINFLUENCE][PAYLOAD])
            for rec in ctx.records
        }
        report = self.estimator.update(fused, payloads)
        ctx.row.update({f"fedinfluence_{k}": v for k, v in report.summary().items()})
        ctx.fedinfluence = self.estimator

    def influence(
        self, inputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[tuple[str, ...], torch.Tensor]:
        """Client ids seen so far and the ``(B, K)`` responsibility (-FIL on logit)."""
        effect = self.estimator.influence_on_loss(inputs, labels)
        return self.estimator.client_ids, effect.responsibility
