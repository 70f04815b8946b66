"""Evaluate the round's global model on the server's held-out test split."""

from __future__ import annotations

from tracefl.analysis.context import RoundContext
from tracefl.train import predict


class EvaluateGlobal:
    """Load the produced global model and record its test accuracy and loss.

    Rounds that produced no global model are skipped (their status is already
    ``failed``).
    """

    name = "evaluate"

    def __call__(self, ctx: RoundContext) -> None:
        """Evaluate ``ctx.outcome.global_state``."""
        state = ctx.outcome.global_state
        if state is None:
            return
        model = ctx.model_factory()
        model.load_state_dict(state)
        losses, preds = predict(model, ctx.test_data, 256, ctx.device)
        accuracy = (preds == ctx.test_data.labels).float().mean().item()
        ctx.model, ctx.predictions, ctx.losses = model, preds, losses
        ctx.row["test_accuracy"] = round(accuracy, 6)
        ctx.row["test_loss"] = round(losses.mean().item(), 6)
