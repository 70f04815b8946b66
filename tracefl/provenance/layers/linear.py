"""``nn.Linear``: ``y = z @ W.T + b`` with ``W`` of shape ``(out, in)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import GRAD_MEMORY_PENALTY, LayerTracer, StackedParams, Workspace, nbytes


def affine_contributions(
    z2: Tensor,
    c2: Tensor,
    params: StackedParams,
    workspace: Workspace,
    *,
    transposed: bool,
) -> tuple[Tensor, int]:
    """Shared kernel for ``nn.Linear`` and GPT-2 ``Conv1D``.

    Parameters
    ----------
    z2
        ``(B, T, in)`` layer inputs (``T`` = product of the extra dimensions).
    c2
        ``(B, T, out)`` output gradients.
    params
        Stacked weights ``(K, out, in)`` (Linear) or ``(K, in, out)`` (Conv1D,
        ``transposed=True``) and biases ``(K, out)``.
    workspace
        Reusable scratch buffers (the per-sample gradient goes there).
    transposed
        Whether the weight is stored ``(in, out)`` (GPT-2 ``Conv1D``).

    """
    b, t, d_in = z2.shape
    d_out = c2.shape[2]
    k = params.num_clients
    p = d_in * d_out
    w = params.weight
    grad_cost = b * t * p + b * p * (k + GRAD_MEMORY_PENALTY)
    stack_cost = b * t * k * p + b * t * k * max(d_in, d_out)
    if stack_cost <= grad_cost:
        if transposed:
            # (B, T, out) x (out, K*in) -> (B, T, K, in), contracted with z.
            cw = torch.matmul(c2, w.reshape(k * d_in, d_out).T).view(b, t, k, d_in)
            out = torch.einsum("btki,bti->bk", cw, z2)
            temp = nbytes(cw)
        else:
            # (B, T, in) x (in, K*out) -> (B, T, K, out), contracted with c.
            y = torch.matmul(z2, w.reshape(k * d_out, d_in).T).view(b, t, k, d_out)
            out = torch.einsum("btko,bto->bk", y, c2)
            temp = nbytes(y)
    else:
        # Per-sample weight gradient, laid out like the weight.
        if transposed:  # (B, in, out)
            g = workspace.get("grad", (b, d_in, d_out), z2)
            torch.bmm(z2.transpose(1, 2), c2, out=g)
        else:  # (B, out, in)
            g = workspace.get("grad", (b, d_out, d_in), z2)
            torch.bmm(c2.transpose(1, 2), z2, out=g)
        out = torch.mm(w.reshape(k, p), g.reshape(b, p).T).T
        temp = nbytes(g)
    if params.bias is not None:
        out = out + c2.sum(1) @ params.bias.reshape(k, d_out).T
    return out, temp


class LinearTracer(LayerTracer):
    """Tracer for ``nn.Linear`` on inputs ``(B, in)`` or ``(B, ..., in)``."""

    name = "Linear"
    #: Weight stored as ``(in, out)`` (GPT-2 ``Conv1D``) instead of ``(out, in)``.
    transposed = False

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.Linear)

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
        return affine_contributions(
            z2, c2, params, workspace, transposed=self.transposed
        )
