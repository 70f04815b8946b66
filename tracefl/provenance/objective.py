"""What ``y`` is: the scalar per input whose provenance is traced.

For logits ``z`` of shape ``(B, C)`` and target classes ``t`` of shape ``(B,)``:

* ``"logit"`` (the paper): ``y_b = z[b, t_b]``;
* ``"log_softmax"``: ``y_b = z[b, t_b] - logsumexp(z[b])``, the log-probability
  of the target (its gradient also pushes down the other classes);
* ``"margin"``: ``y_b = z[b, t_b] - max_{j != t_b} z[b, j]``, how far the target
  is ahead of the strongest competitor (needs ``C >= 2``).

Every ``c_l = dy/d(layer output)`` and Eq. 5-7 are the same for all three.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .validation import ProvenanceInputError

#: Accepted values of ``objective=``.
OBJECTIVES = ("logit", "log_softmax", "margin")


def check_objective(objective: object) -> str:
    """Return ``objective`` if it is one of :data:`OBJECTIVES`, else raise."""
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise ProvenanceInputError(
            f"objective={objective!r} is not one of {list(OBJECTIVES)}"
        )
    return objective


def objective_values(logits: Tensor, targets: Tensor, objective: str) -> Tensor:
    """``(B,)`` values ``y_b`` of ``objective`` for ``(B, C)`` logits and targets."""
    picked = logits.gather(1, targets[:, None])[:, 0]
    if objective == "logit":
        return picked
    if objective == "log_softmax":
        return picked - torch.logsumexp(logits, dim=1)
    if logits.shape[1] < 2:
        raise ProvenanceInputError(
            "objective='margin' needs at least 2 classes, the model has "
            f"{logits.shape[1]}"
        )
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return picked - others.amax(dim=1)
