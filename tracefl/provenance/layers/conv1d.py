"""transformers' GPT-2 ``Conv1D``: ``y = z @ W + b`` with ``W`` of shape ``(in, out)``.

transformers is optional: the class is looked up in ``sys.modules`` only, so this
module never imports transformers itself. A model containing a ``Conv1D`` has
necessarily imported it already.
"""

from __future__ import annotations

import sys

from torch import Tensor, nn

from .base import LayerTracer, StackedParams, Workspace
from .linear import affine_contributions


def _conv1d_class() -> type | None:
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


class Conv1DTracer(LayerTracer):
    """Tracer for ``transformers.pytorch_utils.Conv1D`` (GPT-2 linear layers)."""

    name = "Conv1D"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is a GPT-2 ``Conv1D`` (transformers imported)."""
        cls = _conv1d_class()
        return cls is not None and isinstance(module, cls)

    def contributions(
        self,
        module: nn.Module,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
    ) -> tuple[Tensor, int]:
        """``(B, K)`` contributions; see :meth:`LayerTracer.contributions`."""
        b = z.shape[0]
        z2 = z.reshape(b, -1, z.shape[-1])
        c2 = c.reshape(b, -1, c.shape[-1])
        return affine_contributions(z2, c2, params, workspace, transposed=True)
