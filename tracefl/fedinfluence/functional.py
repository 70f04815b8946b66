"""The model as a function of its weights (``torch.func.functional_call``).

Fed-Influence evaluates one architecture at many weights (the clients' local
models, the global model, the counterfactual models ``w_t + epsilon^{-c}``)
without loading them into, or otherwise touching, the user's module.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call

Features = Tensor | Mapping[str, Tensor]


def batch_size_of(features: Features) -> int:
    """Number of rows of a tensor or of a dict of tensors (all must agree)."""
    if isinstance(features, Mapping):
        sizes = {len(v) for v in features.values()}
        if len(sizes) != 1:
            raise ValueError(f"input tensors have different batch sizes {sizes}")
        return sizes.pop()
    return len(features)


def take(features: Features, index: Tensor | slice) -> Features:
    """Rows ``index`` of a tensor or of every tensor of a dict."""
    if isinstance(features, Mapping):
        return {k: v[index] for k, v in features.items()}
    return features[index]


def logits_at(
    model: nn.Module, weights: Mapping[str, Tensor], features: Features
) -> Tensor:
    """Logits ``(B, C)`` of ``model`` with ``weights`` replacing its own entries.

    Entries missing from ``weights`` are the module's own. A dict input is passed
    as keyword arguments (transformers); an output with ``.logits`` is unwrapped.
    """
    if isinstance(features, Mapping):
        out = functional_call(model, dict(weights), (), dict(features))
    else:
        out = functional_call(model, dict(weights), (features,))
    return out.logits if hasattr(out, "logits") else out
