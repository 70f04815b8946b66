"""``nn.Linear``: ``o = z @ W.T + b`` with ``W`` of shape ``(out, in)``.

Also the kernel of every layer that is a linear map of feature rows: GPT-2
``Conv1D`` (weight stored ``(in, out)``), convolutions on patches, attention
projections.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from ..call import ModuleCall
from .base import (
    GRAD_MEMORY_PENALTY,
    Contraction,
    LayerSpec,
    LayerTracer,
    ParamView,
    Workspace,
    inner,
    nbytes,
)


def affine_contraction(
    z2: Tensor,
    c2: Tensor,
    weight: ParamView,
    bias: ParamView | None,
    num_clients: int,
    workspace: Workspace,
    *,
    transposed: bool = False,
    layer: int = 0,
) -> Contraction:
    """Contraction of one use of an affine map of rows.

    Parameters
    ----------
    z2
        ``(B, T, in)`` layer inputs (``T`` rows per input).
    c2
        ``(B, T, out)`` output gradients.
    weight, bias
        Client views: the weight gathers as ``(K_c, out, in)`` (``(K_c, in, out)``
        when ``transposed``, GPT-2 ``Conv1D``), the bias as ``(K_c, out)``.
    num_clients
        ``K_c`` for the cost model.
    workspace
        The per-sample gradient goes into slot ``"grad"``.
    transposed
        Weight stored ``(in, out)``.
    layer
        Index of the layer in its module's layers.

    Notes
    -----
    Two evaluation orders, picked by a cost model: "grad", the per-input weight
    gradient ``G[b] = c2[b].T @ z2[b]`` then one ``(B, P) x (P, K_c)`` product
    (``B*T*P + B*P*K_c`` multiply-adds), or "stack", the layer run with all
    ``K_c`` weights at once and contracted with ``c2`` (``B*T*K_c*P``; no
    ``(B, P)`` buffer, best for one row per input).

    """
    b, t, d_in = z2.shape
    d_out = c2.shape[2]
    k = num_clients
    p = d_in * d_out
    grad_cost = b * t * p + b * p * (k + GRAD_MEMORY_PENALTY)
    stack_cost = b * t * k * p + b * t * k * max(d_in, d_out)
    c_sum = c2.sum(1) if bias is not None else None  # (B, out)
    views = (weight,) if bias is None else (weight, bias)

    def add_bias(out: Tensor, params: Sequence[Tensor]) -> Tensor:
        if c_sum is None:
            return out
        return out + c_sum @ params[1].reshape(-1, d_out).T

    if stack_cost <= grad_cost:

        def stacked(params: Sequence[Tensor]) -> Tensor:
            w = params[0]
            kc = w.shape[0]
            if transposed:
                # (B, T, out) x (out, K*in) -> (B, T, K, in), contracted with z.
                cw = torch.matmul(c2, w.reshape(kc * d_in, d_out).T)
                out = torch.einsum("btki,bti->bk", cw.view(b, t, kc, d_in), z2)
            else:
                # (B, T, in) x (in, K*out) -> (B, T, K, out), contracted with c.
                y = torch.matmul(z2, w.reshape(kc * d_out, d_in).T)
                out = torch.einsum("btko,bto->bk", y.view(b, t, kc, d_out), c2)
            return add_bias(out, params)

        temp = b * t * k * max(d_in, d_out) * z2.element_size()
        return Contraction(layer, views, stacked, temp)

    # Per-sample weight gradient, laid out like the weight.
    if transposed:  # (B, in, out)
        g = workspace.get("grad", (b, d_in, d_out), z2)
        torch.bmm(z2.transpose(1, 2), c2, out=g)
    else:  # (B, out, in)
        g = workspace.get("grad", (b, d_out, d_in), z2)
        torch.bmm(c2.transpose(1, 2), z2, out=g)
    flat = g.view(b, p)

    def from_grad(params: Sequence[Tensor]) -> Tensor:
        w = params[0]
        return add_bias(inner(flat, w), params)

    return Contraction(layer, views, from_grad, nbytes(g))


class LinearTracer(LayerTracer):
    """Tracer for ``nn.Linear`` on inputs ``(..., in)`` in any batch layout."""

    name = "Linear"
    #: Weight stored as ``(in, out)`` (GPT-2 ``Conv1D``) instead of ``(out, in)``.
    transposed = False

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.Linear)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        (spec,) = layers
        weight = ParamView(spec.params[0])
        bias = ParamView(spec.params[1]) if len(spec.params) > 1 else None
        yield affine_contraction(
            call.rows("arg0"),
            call.rows("out0"),
            weight,
            bias,
            num_clients,
            workspace,
            transposed=self.transposed,
        )


class BilinearTracer(LayerTracer):
    """Tracer for ``nn.Bilinear``: ``o = x1 @ W @ x2 + b``, ``W`` ``(out, in1, in2)``.

    Per-input weight gradient ``G[b] = sum_r c[b, r] (x) x1[b, r] (x) x2[b, r]``
    then one ``(B, P) x (P, K_c)`` product.
    """

    name = "Bilinear"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.Bilinear)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """Both inputs and the output."""
        return ("arg0", "arg1", "out0")

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        (spec,) = layers
        x1, x2, c = call.rows("arg0"), call.rows("arg1"), call.rows("out0")
        b = c.shape[0]
        grad = torch.einsum("bro,bri,brj->boij", c, x1, x2).reshape(b, -1)
        c_sum = c.sum(1) if len(spec.params) > 1 else None

        def fn(params: Sequence[Tensor]) -> Tensor:
            w = params[0]
            out = inner(grad, w)
            if c_sum is not None:
                out = out + c_sum @ params[1].T
            return out

        views = tuple(ParamView(key) for key in spec.params)
        yield Contraction(0, views, fn, nbytes(grad))
