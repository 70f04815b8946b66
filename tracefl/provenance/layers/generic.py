"""The generic path: per-input parameter gradients with ``torch.func``.

For a module whose output is linear in all of its parameters jointly (a user's
own layer), Eq. 5 equals ``<dy_b/d theta, theta_k>``. The module is
re-run on each input alone (``vmap`` over the batch, every tensor restored to a
batch of one in its own layout) and ``grad`` of ``<c_b, module(z_b)>`` gives the
per-input gradient of every parameter; one product per parameter with the
gathered client parameters gives the contributions. Slower than the fast
kernels (it re-runs the module and keeps ``(B, P)`` gradients), but needs
nothing beyond the module's forward.

The module must really be linear in its parameters (no parameter-free term, no
product of parameters); the engine cannot check this, the user who lists a type
asserts it. Parametrised weights are not supported here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parametrize

from ..call import ModuleCall
from ..layout import BatchLayout
from .base import (
    Contraction,
    LayerSpec,
    LayerTracer,
    ParamView,
    UntraceableError,
    Workspace,
    inner,
    nbytes,
    qualify,
)


class GenericTracer(LayerTracer):
    """Trace modules of ``types`` through per-input gradients (``torch.func``).

    Parameters
    ----------
    types
        Module classes whose output is linear in all their parameters. A
        matched module is one layer holding all its parameters (also those of
        its submodules, which are then not traced separately).
    name
        Family name in reports (default: the first type's name).

    """

    claims_children = True

    def __init__(self, types: tuple[type[nn.Module], ...], name: str = "") -> None:
        super().__init__(parametrized=False)
        if not types or not all(isinstance(t, type) for t in types):
            raise TypeError("GenericTracer needs a non-empty tuple of module classes")
        self.types = types
        self.name = name or types[0].__name__

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is an instance of one of the types."""
        return isinstance(module, self.types)

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """One layer with every parameter of the module."""
        if any(parametrize.is_parametrized(m) for m in module.modules()):
            raise UntraceableError(
                "parametrised weights are not supported by the generic path"
            )
        names = [n for n, _ in module.named_parameters()]
        if not names:
            return ()
        return (LayerSpec(qualname, tuple(qualify(qualname, n) for n in names)),)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """Every tensor of the call."""
        return tuple(call.tensors())

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        (spec,) = layers
        module = call.module
        names = [n for n, _ in module.named_parameters()]
        params = {n: p.detach() for n, p in module.named_parameters()}
        arg_keys = [
            f"arg{i}" if isinstance(a, Tensor) else None
            for i, a in enumerate(call.args)
        ]
        kw_keys = {
            k: f"kw:{k}" for k, v in call.kwargs.items() if isinstance(v, Tensor)
        }
        used = [i for i, g in enumerate(call.grads) if g is not None]
        tensor_keys = [k for k in arg_keys if k is not None] + list(kw_keys.values())
        layouts = {k: call.layouts[k] for k in tensor_keys}
        batched = [k for k in tensor_keys if layouts[k].kind != "shared"]
        values = [call.batch_first(k) for k in batched]
        cotangents = [call.batch_first(f"out{i}") for i in used]
        out_layouts = [call.layouts[f"out{i}"] for i in used]

        def per_input(
            p: dict[str, Tensor], tensors: Sequence[Tensor], cs: Sequence[Tensor]
        ) -> Tensor:
            given = dict(zip(batched, tensors, strict=True))

            def arg(key: str | None, raw: object) -> object:
                if key is None:
                    return raw
                if key in given:
                    return _one_input(given[key], layouts[key])
                return raw

            args = tuple(arg(k, a) for k, a in zip(arg_keys, call.args, strict=True))
            kwargs = {k: arg(kw_keys.get(k), v) for k, v in call.kwargs.items()}
            returned = functional_call(module, p, args, kwargs)
            outs = (
                [returned]
                if isinstance(returned, Tensor)
                else [o for o in returned if isinstance(o, Tensor)]
            )
            total = torch.zeros((), dtype=cs[0].dtype, device=cs[0].device)
            for i, c, layout in zip(used, cs, out_layouts, strict=True):
                o = outs[i]
                if layout.kind != "shared":
                    o = layout.to_batch_first(o, 1)[0]
                total = total + (o * c).sum()
            return total

        with torch.enable_grad():
            grads = vmap(grad(per_input), in_dims=(None, 0, 0))(
                params, values, cotangents
            )
        flat = [grads[n].reshape(call.batch, -1) for n in names]
        views = tuple(ParamView(key) for key in spec.params)

        def fn(gathered: Sequence[Tensor]) -> Tensor:
            out = None
            for g, w in zip(flat, gathered, strict=True):
                part = inner(g, w)
                out = part if out is None else out + part
            assert out is not None
            return out

        yield Contraction(0, views, fn, nbytes(*flat))


def _one_input(t: Tensor, layout: BatchLayout) -> Tensor:
    """One input's ``(*per_input_shape)`` tensor as a batch of one in its layout."""
    if layout.kind == "dim":
        return t.unsqueeze(layout.dim)
    return t  # flattened: m rows of one input are the whole dimension
