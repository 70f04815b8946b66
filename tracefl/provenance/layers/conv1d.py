"""transformers' GPT-2 ``Conv1D``: ``y = z @ W + b`` with ``W`` of shape ``(in, out)``.

transformers is optional: the class is looked up in ``sys.modules`` only, so this
module never imports transformers itself. A model containing a ``Conv1D`` has
necessarily imported it already.
"""

from __future__ import annotations

import sys

from torch import nn

from .linear import LinearTracer


def _conv1d_class() -> type | None:
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


class Conv1DTracer(LinearTracer):
    """Tracer for ``transformers.pytorch_utils.Conv1D`` (GPT-2 linear layers).

    Same computation as ``nn.Linear`` with the weight stored transposed.
    """

    name = "Conv1D"
    transposed = True

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is a GPT-2 ``Conv1D`` (transformers imported)."""
        cls = _conv1d_class()
        return cls is not None and isinstance(module, cls)
