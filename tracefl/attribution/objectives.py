"""The scalar ``f(logits, target)`` a method attributes, evaluated directly.

The engine differentiates these; leave-one-out evaluates them on
counterfactual models. Same definitions as the engine's ``objective=``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .errors import AttributionError


def logits_of(output: object) -> Tensor:
    """``(B, C)`` logits from a tensor, an object with ``.logits`` or a mapping."""
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(getattr(output, "logits", None), Tensor):
        logits = output.logits  # type: ignore[attr-defined]
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        logits = output["logits"]
    else:
        raise AttributionError(
            f"model output of type {type(output).__name__} has no logits tensor"
        )
    if logits.dim() != 2:
        raise AttributionError(
            f"model logits must have shape (B, C), got {tuple(logits.shape)}"
        )
    return logits


def resolve_targets(
    target: int | Tensor | None, predicted: Tensor, num_classes: int
) -> Tensor:
    """``(B,)`` int64 targets: the prediction, one class for all, or per input."""
    b = predicted.shape[0]
    if target is None:
        return predicted.clone()
    if isinstance(target, Tensor):
        if target.shape != (b,) or target.dtype != torch.int64:
            raise AttributionError(
                f"target tensor must be (B,) = ({b},) int64, got "
                f"{tuple(target.shape)} {target.dtype}"
            )
        out = target.to(predicted.device)
    elif isinstance(target, int) and not isinstance(target, bool):
        out = torch.full((b,), target, dtype=torch.int64, device=predicted.device)
    else:
        raise AttributionError(
            f"target must be None, an int or a (B,) int64 tensor, got {target!r}"
        )
    if bool((out < 0).any()) or bool((out >= num_classes).any()):
        raise AttributionError(
            f"target classes must be in [0, {num_classes}), got {out.tolist()}"
        )
    return out


def objective_values(logits: Tensor, targets: Tensor, objective: str) -> Tensor:
    """``(B,)`` float64 objective of each input.

    ``logit``: ``z_t``; ``log_softmax``: ``z_t - logsumexp(z)``; ``margin``:
    ``z_t - max_{c != t} z_c`` (``z_t`` itself with one class).
    """
    z = logits.double()
    picked = z.gather(1, targets[:, None])[:, 0]
    if objective == "logit":
        return picked
    if objective == "log_softmax":
        return picked - torch.logsumexp(z, dim=1)
    if objective == "margin":
        if z.shape[1] == 1:
            return picked
        others = z.scatter(1, targets[:, None], float("-inf"))
        return picked - others.max(1).values
    raise AttributionError(
        f"objective={objective!r} is not one of ['logit', 'log_softmax', 'margin']"
    )
