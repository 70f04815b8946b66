"""Keep the round's models for later explanation (``keep-models-rounds``)."""

from __future__ import annotations

from tracefl.analysis.context import RoundContext
from tracefl.model_store import ModelStore


class SaveModels:
    """Write the chosen rounds' models to the run's model store.

    ``tracefl explain --run-dir ... --round R`` and
    :meth:`tracefl.model_store.ModelStore.load_round` read them back.
    """

    name = "save-models"

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def __call__(self, ctx: RoundContext) -> None:
        """Save ``ctx.outcome.fused`` if the policy keeps this round."""
        fused = ctx.outcome.fused
        if fused is not None and self.store.wants_round(ctx.server_round):
            ctx.row["models_saved"] = self.store.save_round(fused)
