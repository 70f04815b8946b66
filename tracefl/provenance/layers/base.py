"""Interface shared by the per-layer-family contribution kernels.

A traced *layer* is a set of parameters ``theta_l`` of one module such that some
output ``o_l`` of that module is linear in them. For input ``b`` and parameter
set (client) ``k`` a tracer computes ::

    t[b, k] = sum_j c_l[b, j] * o_l(z_l[b]; theta_{l,k})[j]            (Eq. 5)
            = <dy_b / d theta_l, theta_{l,k}>

with ``z_l`` the global model's input to the layer and ``c_l = dy/d o_l``. The
second form (the per-input parameter gradient) follows from linearity and is
what the generic path and the "grad" evaluation order use; the "stack" order
re-runs the layer once with all ``K`` parameter sets stacked along its output
dimension. Tracers pick the cheaper from the shapes.

A module may hold several layers (``nn.MultiheadAttention``: the input and the
output projection) and may be called several times per forward pass; its
contributions are summed over its uses.

How a tracer works: :meth:`LayerTracer.layers` lists the module's layers once,
at set-up; for every recorded call :meth:`LayerTracer.contractions` yields
:class:`Contraction` objects, each of which names the client parameter views it
needs (:class:`ParamView`) and maps the gathered ``(K_c, ...)`` views of a chunk
of ``K_c`` clients to ``(B, K_c)`` contributions. The engine gathers the views
chunk by chunk, so client parameters are never stacked whole.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from ..call import ModuleCall

# Cost-model constant: extra cost, in multiply-add units per element, charged to
# the per-sample-gradient form for writing and re-reading its (B, P) buffer and
# for the bandwidth-bound skinny (B, P) x (P, K) product. Heuristic; with it the
# stacked form is picked for 1x1 output maps / single-token Linear layers and the
# gradient form for larger maps (ResNet18/DenseNet121 on 32x32, 2 CPU cores).
GRAD_MEMORY_PENALTY = 16.0


class UntraceableError(Exception):
    """A module a tracer matches but cannot trace exactly; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LayerSpec:
    """One traced layer.

    Attributes
    ----------
    name
        Qualified layer name: the module's name, or ``<module>.<part>`` for a
        module holding several layers (``attn.in_proj``).
    params
        Qualified names of the layer's *effective* parameters as the module uses
        them (``fc.weight`` also when ``weight`` is computed by a
        parametrisation); see :class:`~tracefl.provenance.clients.ClientParams`.

    """

    name: str
    params: tuple[str, ...]


@dataclass(frozen=True)
class ParamView:
    """Part of one effective parameter that a contraction needs from each client.

    ``index`` is applied as ``param[index]``: ``None`` (all of it), a tuple of
    slices (e.g. the kernel taps a convolution uses, a row block of a fused
    weight), or a 1-d int64 tensor of rows (embedding lookups).
    """

    key: str
    index: tuple[slice, ...] | Tensor | None = None

    def apply(self, param: Tensor) -> Tensor:
        """``param[index]``."""
        if self.index is None:
            return param
        if isinstance(self.index, Tensor):
            return param.index_select(0, self.index)
        return param[self.index]


@dataclass
class Contraction:
    """Contributions of one layer use, for any chunk of clients.

    Attributes
    ----------
    layer
        Index of the layer in the module's :meth:`LayerTracer.layers`.
    views
        Client parameter views ``fn`` needs, gathered as ``(K_c, *view_shape)``.
    fn
        Gathered views -> ``(B, K_c)`` contributions in the compute dtype.
    temp_bytes
        Largest temporary allocated (for the peak-memory estimate).

    """

    layer: int
    views: tuple[ParamView, ...]
    fn: Callable[[Sequence[Tensor]], Tensor]
    temp_bytes: int = 0


@dataclass
class Workspace:
    """Scratch buffers reused across layers, chunks and calls.

    Why: per-sample gradients are ``(B, P)`` buffers of tens of MB; allocating
    them fresh for every layer goes through ``mmap`` and page faults on CPU, which
    measured slower than the matrix products themselves (about 40 ms per 75 MB on
    2 cores). Not thread-safe: one engine computes one attribution at a time.
    """

    _buffers: dict[str, Tensor] = field(default_factory=dict)

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
    """One family of traced layers (``nn.Linear``, ``nn.Conv2d``, ...).

    ``parametrized=False`` restricts the family to modules whose weights are
    plain ``nn.Parameter`` (the original artifact's behaviour, ``layers="paper"``);
    otherwise weights computed by ``torch.nn.utils.parametrize`` or the old
    ``weight_norm`` hook are traced through their effective value.
    """

    #: Human-readable family name used in reports and errors.
    name: str = ""
    #: Whether the module's submodules belong to it (not traced on their own).
    claims_children: bool = False

    def __init__(self, *, parametrized: bool = True) -> None:
        self.parametrized = parametrized

    @abstractmethod
    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """The module's traced layers; by default one with ``weight``/``bias``.

        Raises :class:`UntraceableError` with the reason for a configuration the
        family cannot trace exactly. An empty tuple means "nothing to trace"
        (e.g. ``LayerNorm(elementwise_affine=False)``).
        """
        attrs = affine_attrs(module, ("weight", "bias"), self.parametrized)
        if not attrs:
            return ()
        return (LayerSpec(qualname, tuple(qualify(qualname, a) for a in attrs)),)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """Tensors of a call whose batch layout the tracer needs."""
        return ("arg0", "out0")

    @abstractmethod
    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """Yield the contractions of one call, one at a time.

        Parameters
        ----------
        call
            The recorded call, with its layouts and output gradients.
        layers
            What :meth:`layers` returned for the module.
        num_clients
            Clients per chunk ``K_c`` (for the cost model).
        workspace
            Reusable scratch buffers. A yielded contraction may keep a buffer
            until the next one is requested.

        """


def qualify(module_name: str, attr: str) -> str:
    """``module_name.attr`` (``attr`` for the root module)."""
    return f"{module_name}.{attr}" if module_name else attr


def affine_attrs(
    module: nn.Module, attrs: Sequence[str], parametrized: bool
) -> tuple[str, ...]:
    """The attributes among ``attrs`` that hold traceable parameters.

    A plain ``nn.Parameter`` always counts; with ``parametrized`` also a weight
    computed by ``torch.nn.utils.parametrize`` or the old ``weight_norm`` hook.
    ``None`` attributes are skipped. A tensor computed some other way (e.g. the
    old ``spectral_norm`` hook) raises :class:`UntraceableError` when ``parametrized``
    and is skipped (the whole module then untraced) otherwise.
    """
    found = []
    for attr in attrs:
        value = getattr(module, attr, None)
        if value is None:
            continue
        if isinstance(value, nn.Parameter) and not parametrize.is_parametrized(
            module, attr
        ):
            found.append(attr)
        elif not parametrized:
            return ()
        elif parametrize.is_parametrized(module, attr) or weight_norm_hook(
            module, attr
        ):
            found.append(attr)
        elif isinstance(value, Tensor):
            raise UntraceableError(
                f"'{attr}' is computed by a forward pre-hook the engine does not "
                "know (e.g. the old torch.nn.utils.spectral_norm); use "
                "torch.nn.utils.parametrizations instead"
            )
    return tuple(found)


def weight_norm_hook(module: nn.Module, attr: str) -> WeightNorm | None:
    """The old ``torch.nn.utils.weight_norm`` hook computing ``attr``, if any."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm) and hook.name == attr:
            return hook
    return None


def inner(grad: Tensor, params: Tensor) -> Tensor:
    """``(B, K_c)`` inner products of ``(B, P)`` gradients with ``(K_c, ...)`` params.

    Computed as ``params @ grad.T``: for these skinny products (``P`` in the
    millions, ``B`` and ``K_c`` in the tens) BLAS is 1.5-3x faster in this
    orientation than ``grad @ params.T`` on CPU (measured with torch 2.14).
    """
    return torch.mm(params.reshape(params.shape[0], -1), grad.T).T


def nbytes(*tensors: Tensor | None) -> int:
    """Total storage size of the given tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
