"""Attribute the selected inputs to the round's clients with the engine."""

from __future__ import annotations

import logging
import time

from tracefl.analysis.context import RoundContext
from tracefl.provenance import NeuronProvenance

log = logging.getLogger("tracefl")

#: The method whose answer the round's headline columns report.
PAPER = "paper"


class Attribute:
    """Run TraceFL's neuron provenance (the paper's Eq. 5-7) on ``ctx.selected``.

    The clients are the round's fused models and ``n_k`` their reported
    training-set sizes; the result lands in ``ctx.attributions["paper"]``.
    """

    name = "attribute"

    def __call__(self, ctx: RoundContext) -> None:
        """Attribute ``ctx.selected``."""
        if not ctx.provenance_pending:
            return
        cfg, fused = ctx.cfg, ctx.outcome.fused
        assert fused is not None and ctx.model is not None
        log.info(
            "Round %d: provenance on %d inputs over %d clients...",
            ctx.server_round,
            len(ctx.selected),
            fused.num_clients,
        )
        start = time.perf_counter()
        engine = NeuronProvenance(
            ctx.model,
            list(fused.clients),
            list(fused.num_examples),
            list(fused.client_ids),
            decay=cfg.beta_decay,
            enable_beta=cfg.enable_beta,
            scale_by_data_share=cfg.client_weights_normalization,
            device=ctx.device,
            chunk_size=cfg.provenance_chunk_size,
        )
        inputs = ctx.test_data.select_features(ctx.selected)
        ctx.attributions[PAPER] = engine.attribute(inputs)
        ctx.seconds[PAPER] = time.perf_counter() - start
        ctx.status = "traced"
