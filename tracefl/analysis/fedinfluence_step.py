"""Fed-Influence (Xue et al., AAAI) next to TraceFL: its state across rounds.

The estimator must see every round in order (its per-client state moves also
for clients that sat a round out), so this step runs on every round that
produced an aggregate, traced or not, and records what it cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tracefl.analysis.context import RoundContext
from tracefl.attribution import AttributionResult
from tracefl.config import ConfigError, TraceFLConfig, sampled_train_nodes
from tracefl.fedinfluence import (
    CostEstimate,
    FedInfluence,
    FedInfluenceConfigError,
    GradientPayload,
    check_settings,
    local_iterations,
)
from tracefl.fedinfluence_estimates import save_estimates
from tracefl.fedinfluence_setup import fedinfluence_settings
from tracefl.reply import FEDINFLUENCE, PAYLOAD


class TrackFedInfluence:
    """Keep Fed-Influence's per-client estimators up to date, round by round.

    Built before training: the settings are checked on the run's model against
    the memory budget (raises :class:`~tracefl.config.ConfigError` naming the
    run-config keys and the culprit). With ``save_dir`` every round's FIP is
    written there (:mod:`tracefl.fedinfluence_estimates`).
    """

    name = "fedinfluence"

    def __init__(
        self,
        cfg: TraceFLConfig,
        model_factory: Callable[[], nn.Module],
        federation_size: int,
        save_dir: Path | None = None,
    ) -> None:
        model = model_factory()
        try:
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
        except FedInfluenceConfigError as err:
            raise ConfigError(
                f"Fed-Influence cannot run with fedinfluence-layers = "
                f"{cfg.fedinfluence_layers!r}, fedinfluence-samples = "
                f"{cfg.fedinfluence_samples}, fedinfluence-memory-budget-mb = "
                f"{cfg.fedinfluence_memory_budget_mb} on model '{cfg.model}' "
                f"({federation_size} clients): {err}"
            ) from err
        self.estimator = FedInfluence(model, settings)
        self.save_dir = save_dir

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
        if self.save_dir is not None:
            save_estimates(self.save_dir, self.estimator)
        ctx.fedinfluence = self.estimator

    def attribute(
        self, inputs: torch.Tensor | dict[str, torch.Tensor], labels: torch.Tensor
    ) -> AttributionResult:
        """Fed-Influence's answer in the methods' format.

        Scores are the responsibility ``-(logit(w_t + eps^-c) - logit(w_t))`` of
        the predicted class, ``(B, K)`` over every client seen so far (FIL on the
        logit; FIL on the loss is what the paper reports on a test set).
        """
        start = time.perf_counter()
        effect = self.estimator.influence_on_loss(inputs, labels)
        scores = effect.responsibility
        return AttributionResult(
            method=self.name,
            scores=scores,
            column_ids=tuple(effect.client_ids),
            num_clients=len(effect.client_ids),
            probs=None,
            traced=scores.argmax(1),
            targets=effect.predicted_labels,
            predicted_labels=effect.predicted_labels,
            seconds=time.perf_counter() - start,
            engine_calls=0,
            forward_passes=len(effect.client_ids) + 1,
        )
