"""Normalisation layers: ``o = n(z) * gamma + beta``, linear in ``(gamma, beta)``.

``n(z)`` is the normalised input computed with the *global* model's statistics:
the input's own (``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``InstanceNorm``
without running statistics) or the global model's running mean and variance
(``BatchNorm`` and tracking ``InstanceNorm`` in eval mode). Client parameter sets
only provide ``gamma`` and ``beta``, never statistics, so a client that is an
update or a share-weighted parameter set works like a model. Client ``k``'s
contribution is ``<sum c * n, gamma_k> + <sum c, beta_k>``, the sums running
over every position that shares one affine coefficient.

``BatchNorm`` without running statistics (``track_running_stats=False``)
normalises with batch statistics even in eval mode, so one input's output
depends on the others; such a model is rejected.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..call import ModuleCall
from ..validation import ProvenanceInputError
from .base import (
    Contraction,
    LayerSpec,
    LayerTracer,
    ParamView,
    Workspace,
    inner,
    nbytes,
)


def _affine(
    spec: LayerSpec, n: Tensor, c: Tensor, sum_dims: tuple[int, ...]
) -> Contraction:
    """Contraction ``<sum c * n, gamma_k> + <sum c, beta_k>`` over ``sum_dims``."""
    b = n.shape[0]
    sums = {
        "weight": (c * n).sum(sum_dims).reshape(b, -1),
        "bias": c.sum(sum_dims).reshape(b, -1),
    }
    terms = [sums[key.rsplit(".", 1)[-1]] for key in spec.params]

    def fn(params: Sequence[Tensor]) -> Tensor:
        out = None
        for term, p in zip(terms, params, strict=True):
            part = inner(term, p)
            out = part if out is None else out + part
        assert out is not None
        return out

    views = tuple(ParamView(key) for key in spec.params)
    return Contraction(0, views, fn, nbytes(n) * 2)


class LayerNormTracer(LayerTracer):
    """Tracer for ``nn.LayerNorm`` with elementwise affine parameters."""

    name = "LayerNorm"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.LayerNorm)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, nn.LayerNorm)
        shape = tuple(module.normalized_shape)
        z = call.rows("arg0", len(shape))
        n = nnf.layer_norm(z, shape, None, None, module.eps)
        yield _affine(layers[0], n, call.rows("out0", len(shape)), (1,))


class RMSNormTracer(LayerTracer):
    """Tracer for ``nn.RMSNorm`` with an elementwise affine weight."""

    name = "RMSNorm"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.RMSNorm)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, nn.RMSNorm)
        shape = tuple(module.normalized_shape)
        z = call.rows("arg0", len(shape))
        n = nnf.rms_norm(z, shape, None, module.eps)
        yield _affine(layers[0], n, call.rows("out0", len(shape)), (1,))


_CHANNEL_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _running_statistics(module: nn.Module) -> bool:
    """Whether the module normalises with its running statistics in eval mode."""
    return (
        isinstance(module, nn.modules.batchnorm._NormBase)
        and module.track_running_stats
        and module.running_mean is not None
    )


def _batch_norm_affine(
    module: nn.Module, spec: LayerSpec, z: Tensor, c: Tensor
) -> Contraction:
    """:func:`_affine` for fixed statistics, without materialising ``n(z)``.

    ``sum c * n = inv_std * (sum c * z - mean * sum c)`` per channel: one pass
    over ``z`` and ``c`` instead of a normalised copy of the input.
    """
    b = z.shape[0]
    inv_std = torch.rsqrt(module.running_var + module.eps)
    c_sum = c.sum((1, *range(3, c.dim())))  # (B, C)
    cz = torch.einsum("bnc...,bnc...->bc", c, z)
    sums = {"weight": inv_std * (cz - module.running_mean * c_sum), "bias": c_sum}
    terms = [sums[key.rsplit(".", 1)[-1]] for key in spec.params]

    def fn(params: Sequence[Tensor]) -> Tensor:
        out = inner(terms[0], params[0])
        for term, p in zip(terms[1:], params[1:], strict=True):
            out = out + inner(term, p)
        return out

    views = tuple(ParamView(key) for key in spec.params)
    return Contraction(0, views, fn, nbytes(c_sum) * 2 + b)


class ChannelNormTracer(LayerTracer):
    """Tracer for per-channel affine norms on ``(N, C, *spatial)`` inputs.

    ``nn.BatchNorm1d/2d/3d`` (eval mode: running statistics), ``nn.GroupNorm``
    and ``nn.InstanceNorm1d/2d/3d`` with ``affine=True``.
    """

    name = "ChannelNorm"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, _CHANNEL_NORMS)

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """Reject BatchNorm without running statistics (it mixes inputs)."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.running_mean is None or module.running_var is None
        ):
            raise ProvenanceInputError(
                f"{type(module).__name__} '{qualname}' has no running statistics "
                "(track_running_stats=False): it normalises with batch statistics "
                "even in eval mode, so an input's prediction depends on the other "
                "inputs and cannot be attributed per input"
            )
        return super().layers(module, qualname)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        raw = call.tensor("arg0")
        batched = raw.dim()
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            batched = module._get_no_batch_dim() + 1
        z = call.images("arg0", batched)  # (B, N, C, *spatial)
        c = call.images("out0", batched)
        if _running_statistics(module):
            yield _batch_norm_affine(module, layers[0], z, c)
            return
        b, m = z.shape[:2]
        flat = z.reshape(b * m, *z.shape[2:])
        n = self._normalize(module, flat).reshape(z.shape)
        yield _affine(layers[0], n, c, (1, *range(3, z.dim())))

    @staticmethod
    def _normalize(module: nn.Module, z: Tensor) -> Tensor:
        """Normalised ``(M, C, *spatial)`` input without the affine part."""
        if isinstance(module, nn.GroupNorm):
            return nnf.group_norm(z, module.num_groups, None, None, module.eps)
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            use_input_stats = not module.track_running_stats
            return nnf.instance_norm(
                z,
                module.running_mean,
                module.running_var,
                None,
                None,
                use_input_stats,
                0.0,
                module.eps,
            )
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        return nnf.batch_norm(
            z, module.running_mean, module.running_var, None, None, False, 0.0,
            module.eps,
        )  # fmt: skip
