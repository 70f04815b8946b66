"""Interface shared by the per-layer-family contribution kernels.

A *tracer* computes, for a batch of inputs and the ``K`` clients at once,

    t[b, k] = sum_j c[b, j] * layer(z[b]; theta_k)[j]

where ``z`` is the global model's input to the layer, ``c = dy/d(layer output)``
and ``theta_k`` the client's parameters. Every traced layer is affine in its
parameters, so the same number is also ``<theta_k, dy/dtheta>[b]`` (the inner
product with the per-sample parameter gradient). Tracers pick, from the shapes,
the cheaper of the two evaluation orders ("grad" form: build per-sample gradients
then one ``(B, P) x (P, K)`` product; "stack" form: run the layer once with all
``K`` clients' weights stacked along the output dimension and contract with ``c``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Cost-model constant: extra cost, in multiply-add units per element, charged to
# the per-sample-gradient form for writing and re-reading its (B, P) buffer and
# for the bandwidth-bound skinny (B, P) x (P, K) product. Heuristic; with it the
# stacked form is picked for 1x1 output maps / single-token Linear layers and the
# gradient form for larger maps (ResNet18/DenseNet121 on 32x32, 2 CPU cores).
GRAD_MEMORY_PENALTY = 16.0


@dataclass
class StackedParams:
    """The ``K`` clients' parameters of one layer, stacked once per engine.

    Attributes
    ----------
    weight : Tensor
        ``(K, *weight.shape)``.
    bias : Tensor or None
        ``(K, *bias.shape)``.
    derived : dict
        Lazily built alternative layouts (e.g. grouped-conv stacking), cached.

    """

    weight: Tensor
    bias: Tensor | None
    derived: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return self.weight.shape[0]

    @property
    def nbytes(self) -> int:
        """Storage size of the stacked tensors (and derived layouts) in bytes."""
        return nbytes(self.weight, self.bias, *self.derived.values())


class Workspace:
    """Scratch buffers reused across layers, chunks and calls.

    Why: per-sample gradients are ``(B, P)`` buffers of tens of MB; allocating
    them fresh for every layer goes through ``mmap`` and page faults on CPU, which
    measured slower than the matrix products themselves (about 40 ms per 75 MB on
    2 cores). Not thread-safe: one engine computes one attribution at a time.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}

    def get(self, slot: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """Return an uninitialised contiguous tensor backed by buffer ``slot``.

        It has ``shape`` and the dtype/device of ``like``; its content is garbage.
        """
        n = math.prod(shape)
        buf = self._buffers.get(slot)
        if (
            buf is None
            or buf.numel() < n
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self._buffers[slot] = buf
        return buf[:n].view(shape)

    @property
    def nbytes(self) -> int:
        """Storage size of all buffers in bytes."""
        return sum(nbytes(b) for b in self._buffers.values())


class LayerTracer(ABC):
    """One family of traced layers (``nn.Linear``, ``nn.Conv2d``, ...)."""

    #: Human-readable family name used in error messages.
    name: str = ""

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""

    def check_supported(self, module: nn.Module, qualname: str) -> None:
        """Raise :class:`ProvenanceInputError` for unsupported configurations."""
        return None

    def param_names(self, module: nn.Module) -> tuple[str, ...]:
        """Names of the module's traced parameters (``weight`` and/or ``bias``)."""
        return tuple(
            n
            for n in ("weight", "bias")
            if isinstance(getattr(module, n, None), nn.Parameter)
        )

    @abstractmethod
    def contributions(
        self,
        module: nn.Module,
        z: Tensor,
        c: Tensor,
        params: StackedParams,
        workspace: Workspace,
    ) -> tuple[Tensor, int]:
        """Contributions of every client for every input.

        Parameters
        ----------
        module
            The global model's layer (read-only: hyper-parameters only).
        z
            ``(B, ...)`` the global model's input to the layer.
        c
            ``(B, ...)`` gradient of ``sum_b y_b`` w.r.t. the layer output; row
            ``b`` only depends on input ``b`` (eval mode).
        params
            Stacked client parameters.
        workspace
            Reusable scratch buffers for large temporaries.

        Returns
        -------
        tuple[Tensor, int]
            ``(B, K)`` contributions in the compute dtype, and the number of bytes
            of the largest temporary allocated (for the peak-memory estimate).

        """


def nbytes(*tensors: Tensor | None) -> int:
    """Total storage size of the given tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
