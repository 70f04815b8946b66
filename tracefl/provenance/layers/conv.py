"""Convolutions: ``nn.Conv1d/2d/3d`` (any ``padding_mode``), ``nn.ConvTranspose*d``.

A convolution is a linear layer applied to every patch of its (padded) input:
``o[b, :, l] = W.view(C_out, -1) @ unfold(z)[b, :, l] + bias``. For ``groups ==
1`` the kernel of :mod:`.linear` therefore runs on ``(B, L, C_in * prod(k))``
patches (``L`` output positions, times the images per input when the batch is
flattened into dimension 0).

Kernel taps that only ever see zero padding (e.g. the 8 outer taps of a 3x3
kernel on a 1x1 feature map, as in ResNet's last stage on 32x32 images) are
dropped from both ``unfold(z)`` and the gathered client weights. Those terms are
exactly zero, so the result is unchanged while the client-side work shrinks up to
9x. Non-zero padding modes (``reflect``, ``replicate``, ``circular``) and string
paddings (``'same'``) pad the input first, as the module itself does.

Grouped/depthwise convolutions use a grouped per-sample-gradient form or a
grouped convolution with the clients' kernels stacked per group.

A transposed convolution is the adjoint of the convolution with the same weight,
stride, padding, dilation and groups, so ``<c, conv_transpose(z; W_k)> =
<conv(c; W_k), z>``: the same kernels run with the roles of ``z`` and ``c``
swapped (the weight ``(C_in, C_out / g, *k)`` is read as a convolution weight).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as nnf
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
from .linear import affine_contraction

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _tap_range(
    size_in: int, size_out: int, kernel: int, stride: int, pad: int, dilation: int
) -> tuple[int, int]:
    """Smallest ``[lo, hi)`` range of kernel taps that touch a real input pixel."""
    used = [
        d
        for d in range(kernel)
        if any(0 <= o * stride - pad + d * dilation < size_in for o in range(size_out))
    ]
    if not used:
        return 0, 0
    return used[0], used[-1] + 1


def _unfold(
    z: Tensor,
    kernel: Sequence[int],
    dilation: Sequence[int],
    pad: Sequence[int],
    stride: Sequence[int],
    taps: Sequence[tuple[int, int]],
    workspace: Workspace,
) -> Tensor:
    """``unfold(z)`` restricted to kernel ``taps``: ``(M, C * prod(taps), L)``.

    ``z`` is ``(M, C, *spatial)``. One strided copy from a ``(M, C, *k, *out)``
    view of the padded input into a reused buffer; faster than ``im2col`` for
    small maps, works in any dimension and never materialises dropped taps.
    """
    if any(pad):
        z = nnf.pad(z, [p for q in reversed(pad) for p in (q, q)])
    m, c = z.shape[:2]
    spatial = z.shape[2:]
    out = [
        (s - d * (k - 1) - 1) // st + 1
        for s, k, d, st in zip(spatial, kernel, dilation, stride, strict=True)
    ]
    sm, sc, *ss = z.stride()
    patches = z.as_strided(
        (m, c, *kernel, *out),
        (
            sm,
            sc,
            *(s * d for s, d in zip(ss, dilation, strict=True)),
            *(s * st for s, st in zip(ss, stride, strict=True)),
        ),
        z.storage_offset(),
    )
    patches = patches[(slice(None), slice(None), *(slice(lo, hi) for lo, hi in taps))]
    buf = workspace.get("unfold", tuple(patches.shape), z)
    buf.copy_(patches)
    return buf.view(m, -1, math.prod(out))


def conv_contraction(
    z: Tensor,
    c: Tensor,
    weight_key: str,
    weight_shape: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    bias: tuple[ParamView, Tensor] | None,
    num_clients: int,
    workspace: Workspace,
) -> Contraction:
    """Contraction of one convolution use ``o = conv(z; W) (+ b)``.

    Parameters
    ----------
    z
        ``(B, N, C, *spatial)`` inputs (``N`` images per input), not padded.
    c
        ``(B, N, O, *spatial_out)`` output gradients.
    weight_key, weight_shape
        The effective weight and its ``(O, C / groups, *k)`` shape.
    stride, pad, dilation, groups
        Convolution hyper-parameters (numeric zero padding ``pad``).
    bias
        The bias view and the ``(B, O)`` output gradients summed over positions
        (for a transposed convolution these are not ``c``).
    num_clients
        ``K_c`` for the cost model.
    workspace
        Reusable scratch buffers.

    """
    b, n, c_in = z.shape[:3]
    c_out = c.shape[2]
    spatial_in, spatial_out = z.shape[3:], c.shape[3:]
    kernel = tuple(weight_shape[2:])
    taps = [
        _tap_range(si, so, k, st, p, d)
        for si, so, k, st, p, d in zip(
            spatial_in, spatial_out, kernel, stride, pad, dilation, strict=True
        )
    ]
    loc = math.prod(spatial_out)
    z4 = z.reshape(b * n, c_in, *spatial_in)
    bias_sum = None if bias is None else bias[1]
    views_tail = () if bias is None else (bias[0],)

    def add_bias(out: Tensor, params: Sequence[Tensor]) -> Tensor:
        if bias_sum is None:
            return out
        return out + bias_sum @ params[1].reshape(-1, bias_sum.shape[1]).T

    if groups > 1:
        return _grouped(
            z4, c, b, n, weight_key, weight_shape, stride, pad, dilation, groups,
            taps, views_tail, add_bias, num_clients, workspace,
        )  # fmt: skip
    full = all(t == (0, k) for t, k in zip(taps, kernel, strict=True))
    pointwise = (
        full and all(k == 1 for k in kernel) and all(s == 1 for s in stride)
    ) and not any(pad)
    if pointwise:  # patches are z itself
        u = z4.reshape(b * n, c_in, loc)
        temp = 0
    else:
        u = _unfold(z4, kernel, dilation, pad, stride, taps, workspace)
        temp = nbytes(u)
    index = None if full else (slice(None), slice(None), *(slice(*t) for t in taps))
    # Linear on patches: z2 (B, N*L, I), c2 (B, N*L, O).
    patch_dim = u.shape[1]
    if n == 1:
        z2 = u.transpose(1, 2)
        c2 = c.reshape(b, c_out, loc).transpose(1, 2)
    else:
        z2 = u.view(b, n, patch_dim, loc).permute(0, 1, 3, 2).reshape(b, -1, patch_dim)
        c2 = c.reshape(b, n, c_out, loc).permute(0, 1, 3, 2).reshape(b, -1, c_out)
    inner = affine_contraction(
        z2, c2, ParamView(weight_key, index), None, num_clients, workspace
    )

    def patches(params: Sequence[Tensor]) -> Tensor:
        return add_bias(inner.fn(params[:1]), params)

    return Contraction(0, inner.views + views_tail, patches, temp + inner.temp_bytes)


def _grouped(
    z4: Tensor,
    c: Tensor,
    b: int,
    n: int,
    weight_key: str,
    weight_shape: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    taps: Sequence[tuple[int, int]],
    views_tail: tuple[ParamView, ...],
    add_bias,
    num_clients: int,
    workspace: Workspace,
) -> Contraction:
    g = groups
    c_out = c.shape[2]
    kernel = tuple(weight_shape[2:])
    loc = math.prod(c.shape[3:])
    p = math.prod(weight_shape)
    k = num_clients
    rows = b * n
    grad_cost = rows * p * loc + b * p * (k + GRAD_MEMORY_PENALTY)
    stack_cost = rows * k * p * loc + rows * k * c_out * loc
    if stack_cost <= grad_cost:
        conv = getattr(nnf, f"conv{len(kernel)}d")
        c6 = c.reshape(b, n, g, c_out // g, loc)

        def stacked(params: Sequence[Tensor]) -> Tensor:
            w = params[0]  # (K_c, C_out, C_in/g, *k)
            kc = w.shape[0]
            # Output channels of the stacked conv ordered (group, client, o).
            w_cat = (
                w.reshape(kc, g, c_out // g, *w.shape[2:])
                .transpose(0, 1)
                .reshape(kc * c_out, *w.shape[2:])
            )
            y = conv(z4, w_cat, None, stride, pad, dilation, g)
            out = torch.einsum(
                "bngkol,bngol->bk", y.reshape(b, n, g, kc, c_out // g, loc), c6
            )
            return add_bias(out, params)

        temp = rows * k * c_out * loc * z4.element_size()
        return Contraction(0, (ParamView(weight_key), *views_tail), stacked, temp)
    u = _unfold(z4, kernel, dilation, pad, stride, taps, workspace)
    patch = u.shape[1] // g  # (C_in/g) * used taps
    # Per-sample, per-group weight gradients (B*g, C_out/g, patch), summed over
    # the N images of an input and their positions.
    cu = c.reshape(b, n, g, c_out // g, loc).permute(0, 2, 3, 1, 4)
    uu = u.view(b, n, g, patch, loc).permute(0, 2, 1, 4, 3)
    grad = workspace.get("grad", (b * g, c_out // g, patch), z4)
    torch.bmm(
        cu.reshape(b * g, c_out // g, n * loc),
        uu.reshape(b * g, n * loc, patch),
        out=grad,
    )
    flat = grad.view(b, -1)
    index = (slice(None), slice(None), *(slice(*t) for t in taps))

    def from_grad(params: Sequence[Tensor]) -> Tensor:
        w = params[0]
        return add_bias(inner(flat, w), params)

    temp = nbytes(u) + nbytes(grad)
    return Contraction(0, (ParamView(weight_key, index), *views_tail), from_grad, temp)


def _padded(module: nn.Module, z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """Apply the padding the module applies itself, as the module does.

    Returns the ``(B, N, C, *spatial)`` input and the zero padding still to apply
    (numeric ``padding`` with ``padding_mode='zeros'``, left to the tap-aware
    unfold).
    """
    spatial = len(module.kernel_size)
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        return z, tuple(module.padding)
    lead = z.shape[:2]
    flat = z.reshape(-1, *z.shape[2:])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    flat = nnf.pad(flat, module._reversed_padding_repeated_twice, mode=mode)
    return flat.reshape(*lead, *flat.shape[1:]), (0,) * spatial


class ConvTracer(LayerTracer):
    """Tracer for ``nn.Conv1d/2d/3d`` (``types`` restricts the dimensions)."""

    name = "Conv"

    def __init__(
        self, types: tuple[type[nn.Module], ...] = CONV_TYPES, *, parametrized=True
    ) -> None:
        super().__init__(parametrized=parametrized)
        self.types = types

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, self.types)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, CONV_TYPES)
        (spec,) = layers
        dims = len(module.kernel_size) + 2
        z, pad = _padded(module, call.images("arg0", dims))
        c = call.images("out0", dims)
        bias = None
        if len(spec.params) > 1:
            bias = (ParamView(spec.params[1]), c.sum(tuple(range(3, c.dim()))).sum(1))
        weight_shape = (module.out_channels, module.in_channels // module.groups)
        yield conv_contraction(
            z,
            c,
            spec.params[0],
            (*weight_shape, *module.kernel_size),
            module.stride,
            pad,
            module.dilation,
            module.groups,
            bias,
            num_clients,
            workspace,
        )


class ConvTransposeTracer(LayerTracer):
    """Tracer for ``nn.ConvTranspose1d/2d/3d`` (adjoint of the convolution)."""

    name = "ConvTranspose"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, CONV_TRANSPOSE_TYPES)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, CONV_TRANSPOSE_TYPES)
        (spec,) = layers
        dims = len(module.kernel_size) + 2
        z = call.images("arg0", dims)
        c = call.images("out0", dims)
        bias = None
        if len(spec.params) > 1:
            bias = (ParamView(spec.params[1]), c.sum(tuple(range(3, c.dim()))).sum(1))
        # conv(c; W) with W (C_in, C_out/g, *k) read as a convolution weight.
        weight_shape = (module.in_channels, module.out_channels // module.groups)
        yield conv_contraction(
            c,
            z,
            spec.params[0],
            (*weight_shape, *module.kernel_size),
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            bias,
            num_clients,
            workspace,
        )
