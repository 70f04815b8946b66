"""Which test inputs a round attributes (and whether it attributes any)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from tracefl import localization as loc
from tracefl.analysis.context import RoundContext
from tracefl.provenance import ProvenanceInputError
from tracefl.provenance.validation import check_finite_state

log = logging.getLogger("tracefl")


class SelectInputs:
    """Pick the inputs to trace, or end the round's provenance with a status.

    Correct mode: correctly predicted inputs of labels the participants hold,
    ``provenance-inputs-per-label`` per label, ``provenance-max-inputs`` in all.
    Faulty mode: mispredictions the flip map explains (true = source label,
    predicted = its target), ``faulty-max-inputs`` in all.

    With a cross-round method enabled, inputs come from the fixed query set
    (:mod:`tracefl.analysis.queries`) only.

    Statuses: ``not-traced`` (provenance off for this round),
    ``no-faulty-participant``, ``no-eligible-inputs``, ``global-model-not-finite``
    (training diverged, e.g. under heavy DP noise: nothing to attribute).
    """

    name = "select"

    def __init__(self, candidates: np.ndarray | None = None) -> None:
        self.candidates = candidates

    def __call__(self, ctx: RoundContext) -> None:
        """Set ``ctx.selected`` or stop with a status."""
        if not ctx.provenance_pending:
            return
        cfg = ctx.cfg
        rounds = cfg.provenance_round_set()
        if not cfg.provenance or (
            rounds is not None and ctx.server_round not in rounds
        ):
            ctx.stop("not-traced")
            return
        assert ctx.model is not None and ctx.predictions is not None
        labels = ctx.test_data.labels
        predictions = ctx.predictions
        if self.candidates is not None:  # others count as mispredicted by nobody
            keep = torch.zeros(len(labels), dtype=torch.bool)
            keep[torch.as_tensor(self.candidates)] = True
            predictions = torch.where(
                keep, predictions, torch.full_like(predictions, -1)
            )
        if cfg.faulty_mode:
            ctx.row["faulty_participants"] = ";".join(
                str(i) for i in ctx.faulty_participants
            )
            if not ctx.faulty_participants:
                ctx.stop("no-faulty-participant")
                return
            idx = loc.select_faulty_inputs(
                labels, predictions, cfg.label_flip_map, cfg.faulty_max_inputs
            )
        else:
            held = np.flatnonzero(ctx.label_counts.sum(axis=0) >= cfg.label_min_count)
            idx = loc.select_correct_inputs(
                labels,
                predictions,
                held.tolist(),
                cfg.provenance_inputs_per_label,
                cfg.provenance_max_inputs,
            )
        if len(idx) == 0:
            log.info("Round %d: no eligible input to trace.", ctx.server_round)
            ctx.stop("no-eligible-inputs")
            return
        try:
            check_finite_state(ctx.model.state_dict(), "global model")
        except ProvenanceInputError as err:
            log.warning("Round %d: %s; not traced.", ctx.server_round, err)
            ctx.stop("global-model-not-finite")
            return
        ctx.selected = idx
