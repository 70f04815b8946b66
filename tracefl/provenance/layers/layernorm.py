"""``nn.LayerNorm``: ``y = normalize(z) * gamma + beta``, affine in (gamma, beta).

The normalisation statistics come from the global model's input ``z`` itself, so
client ``k``'s layer output is ``n * gamma_k + beta_k`` with ``n = normalize(z)``
and its contribution is ``<sum_tokens c * n, gamma_k> + <sum_tokens c, beta_k>``.
"""

from __future__ import annotations

import math

import torch.nn.functional as nnf
from torch import Tensor, nn

from .base import LayerTracer, StackedParams, Workspace, nbytes


class LayerNormTracer(LayerTracer):
    """Tracer for ``nn.LayerNorm`` with elementwise affine parameters."""

    name = "LayerNorm"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.LayerNorm)

    def contributions(
        self,
        module: nn.Module,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
    ) -> tuple[Tensor, int]:
        """``(B, K)`` contributions; see :meth:`LayerTracer.contributions`."""
        assert isinstance(module, nn.LayerNorm)
        shape = tuple(module.normalized_shape)
        d = math.prod(shape)
        b = z.shape[0]
        k = params.num_clients
        n = nnf.layer_norm(z, shape, None, None, module.eps)
        c2 = c.reshape(b, -1, d)
        g_gamma = (c2 * n.reshape(b, -1, d)).sum(1)  # (B, D)
        out = g_gamma @ params.weight.reshape(k, d).T
        if params.bias is not None:
            out = out + c2.sum(1) @ params.bias.reshape(k, d).T
        return out, nbytes(n) * 2
