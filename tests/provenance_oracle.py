"""Literal reference implementation of TraceFL's Algorithm 1 (test helper).

Deliberately simple and slow: one input at a time, one layer at a time, one client
at a time, re-running a copy of the layer with the client's parameters.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


def _is_traced(module: nn.Module) -> bool:
    types: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.LayerNorm)
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    if pytorch_utils is not None:
        types = (*types, pytorch_utils.Conv1D)
    return isinstance(module, types) and getattr(module, "weight", None) is not None


def _client_state(client: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return client.state_dict() if isinstance(client, nn.Module) else client


def _make_recording_hook(captured: list):
    """Forward hook appending ``(module, z, output)`` for each traced layer call."""

    def hook(module, args, output):
        out = output.clone()  # later in-place ops must not alter the record
        captured.append((module, args[0].detach().clone(), output))
        return out

    return hook


def oracle_scores(
    global_model: nn.Module,
    client_models: Sequence[nn.Module | Mapping[str, Tensor]],
    client_weights: Sequence[float],
    inputs: Tensor | Mapping[str, Tensor],
    *,
    decay: float = 0.9,
    enable_beta: bool = True,
    scale_by_data_share: bool = False,
    target: int | Tensor | None = None,
    objective: str = "logit",
) -> tuple[Tensor, list[str]]:
    """Return raw scores ``T`` of shape ``(B, K)`` (float64) and the layer names.

    ``target`` is the class of every input (``int``), one class per input
    (``(B,)`` tensor) or ``None`` (the predicted class); ``objective`` is what
    ``y`` is: the target's logit, its log-softmax, or its margin over the best
    other class.
    """
    global_model = copy.deepcopy(global_model).eval()
    for p in global_model.parameters():
        p.requires_grad_(True)  # so that every layer output is differentiable
    states = [_client_state(c) for c in client_models]
    total = sum(client_weights)
    shares = [w / total for w in client_weights]
    names = {m: n for n, m in global_model.named_modules()}
    if isinstance(inputs, Tensor):
        batch = inputs.shape[0]
    else:
        batch = next(iter(inputs.values())).shape[0]

    rows = []
    for b in range(batch):
        # Forward on a single input, recording each traced layer's input and output.
        captured = []  # (module, z, output)

        hook = _make_recording_hook(captured)
        handles = [
            m.register_forward_hook(hook)
            for m in global_model.modules()
            if _is_traced(m)
        ]
        try:
            if isinstance(inputs, Tensor):
                out = global_model(inputs[b : b + 1])
            else:
                out = global_model(**{k: v[b : b + 1] for k, v in inputs.items()})
        finally:
            for h in handles:
                h.remove()
        logits = out if isinstance(out, Tensor) else out.logits
        if target is None:
            chosen = int(logits[0].argmax())
        elif isinstance(target, int):
            chosen = target
        else:
            chosen = int(target[b])
        y = _objective(logits[0], chosen, objective)
        outputs = [o for _, _, o in captured]
        grads = torch.autograd.grad(y, outputs, allow_unused=True)

        num_layers = len(captured)
        totals = [0.0] * len(states)
        for layer_index, ((module, z, _), c) in enumerate(
            zip(captured, grads, strict=True)
        ):
            if c is None:
                continue
            beta = decay ** (num_layers - 1 - layer_index) if enable_beta else 1.0
            name = names[module]
            for k, state in enumerate(states):
                client_layer = copy.deepcopy(module)
                scale = shares[k] if scale_by_data_share else 1.0
                with torch.no_grad():
                    client_layer.weight.copy_(state[f"{name}.weight"] * scale)
                    if getattr(module, "bias", None) is not None:
                        client_layer.bias.copy_(state[f"{name}.bias"] * scale)
                    client_out = client_layer(z)
                    contribution = float((client_out * c).sum())
                totals[k] += beta * contribution
        rows.append(totals)
        global_model.zero_grad(set_to_none=True)
    layer_names = [names[m] for m, _, _ in captured]
    return torch.tensor(rows, dtype=torch.float64), layer_names


def _objective(logits: Tensor, chosen: int, objective: str) -> Tensor:
    """``y`` for one input's ``(C,)`` logits, written out per definition."""
    if objective == "logit":
        return logits[chosen]
    if objective == "log_softmax":
        return torch.log(torch.exp(logits) / torch.exp(logits).sum())[chosen]
    if objective == "margin":
        others = [logits[j] for j in range(logits.shape[0]) if j != chosen]
        best = others[0]
        for value in others[1:]:
            best = torch.maximum(best, value)
        return logits[chosen] - best
    raise ValueError(objective)


def oracle_probs(scores: Tensor) -> Tensor:
    """Softmax over clients, written out (Eq. 7)."""
    out = torch.empty_like(scores)
    for b in range(scores.shape[0]):
        m = max(scores[b].tolist())
        exps = [math.exp(s - m) for s in scores[b].tolist()]
        total = sum(exps)
        for k, e in enumerate(exps):
            out[b, k] = e / total
    return out
