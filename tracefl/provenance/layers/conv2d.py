"""``nn.Conv2d`` (any stride, padding, dilation, groups; ``padding_mode='zeros'``).

A convolution is a linear layer applied to every patch of the input:
``y[b, :, l] = W.view(C_out, -1) @ unfold(z)[b, :, l] + bias``. For ``groups == 1``
the kernel of :mod:`.linear` is therefore reused on ``(B, L, C_in*kh*kw)`` patches
(``L`` output positions), choosing between the per-sample-gradient form (cost
``B*P*L + B*P*K``; opacus-style ``G[b] = c[b] @ unfold(z[b]).T``) and the
stacked-weights form (cost ``B*K*P*L``, no ``(B, P)`` buffer; best for tiny maps).

Kernel taps that only ever see zero padding (e.g. the 8 outer taps of a 3x3 kernel
on a 1x1 feature map, as in ResNet's last stage on 32x32 images) are dropped
from both ``unfold(z)`` and the stacked weights. Those terms are exactly zero, so
the result is unchanged while the client-side work shrinks up to 9x.

Grouped/depthwise convolutions use a grouped per-sample-gradient form or a
grouped convolution with the clients' kernels stacked per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..validation import ProvenanceInputError
from .base import GRAD_MEMORY_PENALTY, LayerTracer, StackedParams, Workspace, nbytes
from .linear import affine_contributions


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
    kernel: tuple[int, int],
    dilation: tuple[int, ...],
    pad: tuple[int, ...],
    stride: tuple[int, ...],
    taps: tuple[int, int, int, int],
    workspace: Workspace,
) -> Tensor:
    """``unfold(z)`` restricted to kernel taps ``[r0:r1, c0:c1]``: ``(B, I, L)``.

    One strided copy from a ``(B, C, kh, kw, H_out, W_out)`` view of the padded
    input into a reused buffer; faster than ``im2col`` for small maps and it never
    materialises the dropped taps.
    """
    if any(pad):
        z = nnf.pad(z, (pad[1], pad[1], pad[0], pad[0]))
    b, c, h, w = z.shape
    kh, kw = kernel
    h_out = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    sb, sc, sh, sw = z.stride()
    patches = z.as_strided(
        (b, c, kh, kw, h_out, w_out),
        (sb, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
        z.storage_offset(),
    )
    r0, r1, c0, c1 = taps
    patches = patches[:, :, r0:r1, c0:c1]
    out = workspace.get("unfold", tuple(patches.shape), z)
    out.copy_(patches)
    return out.view(b, -1, h_out * w_out)


class Conv2dTracer(LayerTracer):
    """Tracer for ``nn.Conv2d`` on ``(B, C_in, H, W)`` inputs."""

    name = "Conv2d"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.Conv2d)

    def check_supported(self, module: nn.Module, qualname: str) -> None:
        """Reject non-zero padding modes (unfold pads with zeros)."""
        assert isinstance(module, nn.Conv2d)
        if module.padding_mode != "zeros":
            raise ProvenanceInputError(
                f"Conv2d '{qualname}' uses padding_mode={module.padding_mode!r}; "
                "only 'zeros' is supported"
            )

    def contributions(
        self,
        module: nn.Module,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
    ) -> tuple[Tensor, int]:
        """``(B, K)`` contributions; see :meth:`LayerTracer.contributions`."""
        assert isinstance(module, nn.Conv2d)
        if z.dim() != 4:
            raise ProvenanceInputError(
                f"Conv2d expects (B, C, H, W) inputs, got shape {tuple(z.shape)}"
            )
        if isinstance(module.padding, str):  # 'same' / 'valid': make it explicit
            z = nnf.pad(z, module._reversed_padding_repeated_twice)
            pad = (0, 0)
        else:
            pad = tuple(module.padding)
        if module.groups == 1:
            return self._patches(module, z, c, params, workspace, pad)
        out, temp = self._grouped(module, z, c, params, workspace, pad)
        if params.bias is not None:  # (K, C_out)
            out = out + c.sum((2, 3)) @ params.bias.T
        return out, temp

    @staticmethod
    def _patches(
        module: nn.Conv2d,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
        pad: tuple[int, ...],
    ) -> tuple[Tensor, int]:
        b, c_in, h_in, w_in = z.shape
        _, c_out, h_out, w_out = c.shape
        k = params.num_clients
        kh, kw = params.weight.shape[-2:]
        loc = h_out * w_out
        stride, dil = tuple(module.stride), tuple(module.dilation)
        r0, r1 = _tap_range(h_in, h_out, kh, stride[0], pad[0], dil[0])
        c0, c1 = _tap_range(w_in, w_out, kw, stride[1], pad[1], dil[1])
        w = params.weight
        full = (r0, r1, c0, c1) == (0, kh, 0, kw)
        if full and (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and pad == (0, 0):
            u = z.reshape(b, c_in, loc)  # pointwise conv: patches are z itself
            temp = 0
        else:
            u = _unfold(z, (kh, kw), dil, pad, stride, (r0, r1, c0, c1), workspace)
            temp = nbytes(u)
        if not full:
            key = f"taps{r0},{r1},{c0},{c1}"
            if key not in params.derived:
                params.derived[key] = w[:, :, :, r0:r1, c0:c1].contiguous()
            w = params.derived[key]
        # Linear on patches: z2 (B, L, C_in*kh'*kw'), c2 (B, L, C_out).
        z2 = u.transpose(1, 2)
        c2 = c.reshape(b, c_out, loc).transpose(1, 2)
        patch_params = StackedParams(w.reshape(k, c_out, -1), params.bias)
        out, temp2 = affine_contributions(
            z2, c2, patch_params, workspace, transposed=False
        )
        return out, temp + temp2

    @staticmethod
    def _grouped(
        module: nn.Conv2d,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
        pad: tuple[int, ...],
    ) -> tuple[Tensor, int]:
        b, c_out, h_out, w_out = c.shape
        k = params.num_clients
        g = module.groups
        w = params.weight  # (K, C_out, C_in/g, kh, kw)
        kh, kw = w.shape[-2:]
        loc = h_out * w_out
        p = w[0].numel()
        grad_cost = b * p * loc + b * p * (k + GRAD_MEMORY_PENALTY)
        stack_cost = b * k * p * loc + b * k * c_out * loc
        if stack_cost <= grad_cost:
            # Output channels of the stacked conv ordered (group, client, o).
            w_cat = params.derived.get("grouped")
            if w_cat is None:
                w_cat = (
                    w.reshape(k, g, c_out // g, *w.shape[2:])
                    .transpose(0, 1)
                    .reshape(k * c_out, *w.shape[2:])
                    .contiguous()
                )
                params.derived["grouped"] = w_cat
            y = nnf.conv2d(z, w_cat, None, module.stride, pad, module.dilation, g)
            out = torch.einsum(
                "bgkol,bgol->bk",
                y.reshape(b, g, k, c_out // g, loc),
                c.reshape(b, g, c_out // g, loc),
            )
            return out, nbytes(y)
        u = nnf.unfold(z, (kh, kw), module.dilation, pad, module.stride)
        # (B*g, C_out/g, L) x (B*g, L, C_in/g*kh*kw) -> per-sample weight grads.
        grad = workspace.get("grad", (b * g, c_out // g, p // c_out), z)
        torch.bmm(
            c.reshape(b * g, c_out // g, loc),
            u.reshape(b * g, u.shape[1] // g, loc).transpose(1, 2),
            out=grad,
        )
        out = torch.mm(w.reshape(k, p), grad.reshape(b, p).T).T
        return out, nbytes(u) + nbytes(grad)
