"""What replacing the global model by a counterfactual one does to predictions.

One function serves the estimate and the ground truth:

* Fed-Influence on Loss (FIL, Eq. 6 and Section "Influence on Loss"): the
  counterfactual of client ``c`` is ``w_t + epsilon_t^{-c}`` (estimated FIP);
  the paper evaluates the loss *at* that model, not a first-order expansion;
* retraining ground truth: the counterfactual is the global model of a run
  retrained without ``c`` (``w_t(C -> C - {c})``, so that ``epsilon^{-c,*}`` is
  the true FIP).

For inputs ``x_b`` (B of them) with labels ``y_b`` and the reference model
``w`` (the global model ``w_t``), with ``y^_b = argmax z(w, x_b)`` the class the
reference predicts (the prediction TraceFL traces)::

    logit[b, c] = z_{y^_b}(w^{-c}, x_b) - z_{y^_b}(w, x_b)
    loss[b, c]  = CE(z(w^{-c}, x_b), y_b) - CE(z(w, x_b), y_b)     (FIL per input)
    test_loss[c] = mean_b loss[b, c]                              (FIL on the set)

A client ranking per prediction, comparable with TraceFL's ``(B, K)`` scores
(high = responsible for the prediction), is ``-logit`` (removing a responsible
client lowers the predicted class's logit); ``loss > 0`` means the client helped.

Evaluated in eval mode, without gradients, in float64 (weights, buffers and
floating inputs cast): FIL is a difference of nearby losses, which float32
rounding (~1e-7 relative) would swamp for small influences. The user's module is
never loaded or moved; its train/eval flag is restored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .functional import Features, batch_size_of, logits_at, take


@dataclass(frozen=True)
class PredictionEffect:
    """Per input and counterfactual, the change of the prediction.

    Attributes
    ----------
    client_ids
        ``K`` names; column ``k`` belongs to ``client_ids[k]``.
    predicted_labels
        ``(B,)`` int64 class predicted by the reference model.
    reference_logit
        ``(B,)`` float64 reference logit of the predicted class.
    reference_loss
        ``(B,)`` float64 reference cross-entropy with the given labels.
    logit
        ``(B, K)`` float64 change of the predicted class's logit.
    loss
        ``(B, K)`` float64 change of the cross-entropy (FIL per input).
    counterfactual_labels
        ``(B, K)`` int64 class each counterfactual model predicts.

    """

    client_ids: tuple[str, ...]
    predicted_labels: Tensor
    reference_logit: Tensor
    reference_loss: Tensor
    logit: Tensor
    loss: Tensor
    counterfactual_labels: Tensor

    @property
    def test_loss(self) -> Tensor:
        """``(K,)`` float64 change of the mean loss over the inputs (FIL)."""
        return self.loss.mean(dim=0)

    @property
    def responsibility(self) -> Tensor:
        """``(B, K)`` float64 ``-logit``: a per-prediction client ranking.

        High when removing the client lowers the predicted class's logit; the
        counterpart of TraceFL's ``(B, K)`` scores (``argmax`` = traced client).
        """
        return -self.logit


def _full_state(
    model: nn.Module, state: Mapping[str, Tensor], owner: str, device: torch.device
) -> dict[str, Tensor]:
    """Every state entry of ``model``, floating ones in float64 (own if absent)."""
    params = {n for n, _ in model.named_parameters()}
    full: dict[str, Tensor] = {}
    for name, own in model.state_dict().items():
        if name in state:
            value = state[name]
            if value.shape != own.shape:
                raise ValueError(
                    f"{owner}: {name!r} has shape {tuple(value.shape)}, the model's "
                    f"is {tuple(own.shape)}"
                )
        elif name in params:
            raise ValueError(f"{owner} lacks parameter {name!r}")
        else:
            value = own
        if value.is_floating_point():
            value = value.to(device, torch.float64)
        full[name] = value.to(device)
    return full


def _logits(
    model: nn.Module, state: dict[str, Tensor], inputs: Features, chunk_size: int
) -> Tensor:
    device = next(iter(state.values())).device
    size = batch_size_of(inputs)
    out = []
    for start in range(0, size, chunk_size):
        chunk = take(inputs, slice(start, start + chunk_size))
        if isinstance(chunk, Mapping):
            chunk = {
                k: v.to(device, torch.float64)
                if v.is_floating_point()
                else v.to(device)
                for k, v in chunk.items()
            }
        else:
            chunk = chunk.to(device, torch.float64)
        out.append(logits_at(model, state, chunk))
    return torch.cat(out)


def counterfactual_effects(
    model: nn.Module,
    reference: Mapping[str, Tensor],
    counterfactuals: Mapping[str, Mapping[str, Tensor]],
    inputs: Features,
    labels: Tensor,
    *,
    chunk_size: int = 256,
) -> PredictionEffect:
    """Effect on each input of replacing ``reference`` by each counterfactual.

    Parameters
    ----------
    model
        The architecture (its own entries fill those missing from the states).
    reference
        State of the reference model ``w`` (every parameter; buffers optional).
    counterfactuals
        Per client id, the state of the model without that client.
    inputs
        ``(B, ...)`` features or a dict of ``(B, ...)`` tensors.
    labels
        ``(B,)`` integer labels.
    chunk_size
        Inputs per forward (bounds memory).

    """
    if not counterfactuals:
        raise ValueError("counterfactuals is empty")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(f"chunk_size must be an int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    size = batch_size_of(inputs)
    if labels.dim() != 1 or len(labels) != size or labels.is_floating_point():
        raise ValueError(
            f"labels must be {size} integers (B,), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if size < 1:
        raise ValueError("inputs is empty")
    device = next(model.parameters()).device
    ref_state = _full_state(model, reference, "reference", device)
    states = {
        c: _full_state(model, s, f"counterfactual {c!r}", device)
        for c, s in counterfactuals.items()
    }
    labels = labels.to(device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ref = _logits(model, ref_state, inputs, chunk_size)
            others = [_logits(model, s, inputs, chunk_size) for s in states.values()]
    finally:
        model.train(was_training)
    predicted = ref.argmax(dim=1)
    column = predicted.unsqueeze(1)
    ref_logit = ref.gather(1, column).squeeze(1)
    ref_loss = nn.functional.cross_entropy(ref, labels, reduction="none")
    logit = torch.stack([o.gather(1, column).squeeze(1) - ref_logit for o in others], 1)
    loss = torch.stack(
        [
            nn.functional.cross_entropy(o, labels, reduction="none") - ref_loss
            for o in others
        ],
        1,
    )
    return PredictionEffect(
        client_ids=tuple(states),
        predicted_labels=predicted.cpu(),
        reference_logit=ref_logit.cpu(),
        reference_loss=ref_loss.cpu(),
        logit=logit.cpu(),
        loss=loss.cpu(),
        counterfactual_labels=torch.stack([o.argmax(dim=1) for o in others], 1).cpu(),
    )
