"""``nn.MultiheadAttention``: its input and output projections.

The module holds two kinds of linear layers that are never called as modules:
the input projection (``in_proj_weight``/``in_proj_bias``, or separate
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when ``kdim``/``vdim``
differ) and the output projection ``out_proj``, which the functional attention
uses through its weights. Their inputs and output gradients are not visible to a
forward hook, so after the backward pass the call is re-run once, batched:

1. ``q, k, v`` are the global projections of the recorded query/key/value;
2. the module runs on ``(q, k, v)`` with identity input projections and an
   identity output projection (via ``torch.func.functional_call``, so masks,
   ``batch_first``, ``bias_k``/``bias_v`` and ``add_zero_attn`` behave exactly
   as in the module), giving the attention output ``a``, the input of
   ``out_proj``;
3. ``out = a @ W_out.T + b_out`` and one ``autograd.grad`` of ``<c, out>`` gives
   ``dy/dq``, ``dy/dk``, ``dy/dv``.

Each projection is then an ordinary linear layer use (:mod:`.linear`). Layers:
``<name>.in_proj`` (or ``.q_proj``, ``.k_proj``, ``.v_proj``) and
``<name>.out_proj``. ``bias_k``/``bias_v`` (``add_bias_kv=True``) are not
traced and appear as untraced parameters in the coverage report.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from ..call import ModuleCall
from ..validation import ProvenanceInputError
from .base import (
    Contraction,
    LayerSpec,
    LayerTracer,
    ParamView,
    UntraceableError,
    Workspace,
    qualify,
)
from .linear import affine_contraction

_INPUTS = ("query", "key", "value")


class MultiheadAttentionTracer(LayerTracer):
    """Tracer for ``nn.MultiheadAttention`` (both ``batch_first`` settings)."""

    name = "MultiheadAttention"
    claims_children = True

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.MultiheadAttention)

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """``in_proj`` (or ``q/k/v_proj``) and ``out_proj``."""
        assert isinstance(module, nn.MultiheadAttention)
        if parametrize.is_parametrized(module) or parametrize.is_parametrized(
            module.out_proj
        ):
            raise UntraceableError(
                "parametrised MultiheadAttention weights are not traced"
            )
        bias_key = ()
        if module.in_proj_bias is not None:
            bias_key = (qualify(qualname, "in_proj_bias"),)
        out_name = qualify(qualname, "out_proj")
        out_attrs = [
            a for a in ("weight", "bias") if getattr(module.out_proj, a) is not None
        ]
        out = LayerSpec(out_name, tuple(qualify(out_name, a) for a in out_attrs))
        if module._qkv_same_embed_dim:
            weight = qualify(qualname, "in_proj_weight")
            return (LayerSpec(qualify(qualname, "in_proj"), (weight, *bias_key)), out)
        specs = [
            LayerSpec(
                qualify(qualname, f"{part}_proj"),
                (qualify(qualname, f"{part}_proj_weight"), *bias_key),
            )
            for part in "qkv"
        ]
        return (*specs, out)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """Query, key, value and the attention output."""
        return (*(_key(call, name) for name in _INPUTS), "out0")

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """The projections' uses; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, nn.MultiheadAttention)
        keys = [_key(call, name) for name in _INPUTS]
        if any(call.layouts[k].kind == "shared" for k in (*keys, "out0")):
            raise ProvenanceInputError(
                f"MultiheadAttention '{call.name}' was called on tensors shared by "
                "all inputs; only batched query/key/value are supported"
            )
        raws = [call.tensor(k) for k in keys]
        grads, attn = _rerun(module, call, raws)
        e = module.embed_dim
        batch = call.batch

        def rows(t: Tensor, key: str) -> Tensor:
            t = call.layouts[key].to_batch_first(t, batch)
            return t.reshape(batch, -1, t.shape[-1])

        fused = module._qkv_same_embed_dim
        self_attention = raws[0] is raws[1] and raws[1] is raws[2]
        if fused and self_attention:
            spec = layers[0]
            z = rows(raws[0], keys[0])
            c = torch.cat([rows(g, keys[0]) for g in grads], dim=-1)
            bias = ParamView(spec.params[1]) if len(spec.params) > 1 else None
            yield affine_contraction(
                z, c, ParamView(spec.params[0]), bias, num_clients, workspace
            )
        else:
            for i, (raw, grad, key) in enumerate(zip(raws, grads, keys, strict=True)):
                spec = layers[0] if fused else layers[i]
                part = (slice(i * e, (i + 1) * e),)
                weight = ParamView(spec.params[0], part if fused else None)
                bias = ParamView(spec.params[1], part) if len(spec.params) > 1 else None
                contraction = affine_contraction(
                    rows(raw, key),
                    rows(grad, key),
                    weight,
                    bias,
                    num_clients,
                    workspace,
                    layer=0 if fused else i,
                )
                yield contraction
        out_spec = layers[-1]
        bias = ParamView(out_spec.params[1]) if len(out_spec.params) > 1 else None
        yield affine_contraction(
            rows(attn, "out0"),
            call.rows("out0"),
            ParamView(out_spec.params[0]),
            bias,
            num_clients,
            workspace,
            layer=len(layers) - 1,
        )


def _key(call: ModuleCall, name: str) -> str:
    """Key of query/key/value in the call, whether passed by position or name."""
    index = _INPUTS.index(name)
    return f"arg{index}" if len(call.args) > index else f"kw:{name}"


def _rerun(
    module: nn.MultiheadAttention, call: ModuleCall, raws: list[Tensor]
) -> tuple[list[Tensor], Tensor]:
    """Gradients ``dy/d(q, k, v)`` of the projections and the attention output.

    All in the layouts of the recorded query/key/value and output.
    """
    bound = inspect.signature(module.forward).bind(*call.args, **call.kwargs)
    bound.apply_defaults()
    options = {k: v for k, v in bound.arguments.items() if k not in _INPUTS}
    e = module.embed_dim
    if module._qkv_same_embed_dim:
        weights = module.in_proj_weight.detach().chunk(3)
    else:
        weights = (
            module.q_proj_weight.detach(),
            module.k_proj_weight.detach(),
            module.v_proj_weight.detach(),
        )
    biases = (
        module.in_proj_bias.detach().chunk(3)
        if module.in_proj_bias is not None
        else (None, None, None)
    )
    like = raws[0]
    eye = torch.eye(e, dtype=like.dtype, device=like.device)
    identity: dict[str, Tensor] = {"out_proj.weight": eye}
    if module.out_proj.bias is not None:
        identity["out_proj.bias"] = torch.zeros(e, dtype=like.dtype, device=like.device)
    if module.in_proj_bias is not None:
        identity["in_proj_bias"] = torch.zeros(
            3 * e, dtype=like.dtype, device=like.device
        )
    if module._qkv_same_embed_dim:
        identity["in_proj_weight"] = torch.cat([eye, eye, eye])
    else:
        identity.update({f"{p}_proj_weight": eye for p in "qkv"})
    with torch.enable_grad():
        projected = [
            nnf.linear(raw.detach(), w, b).requires_grad_(True)
            for raw, w, b in zip(raws, weights, biases, strict=True)
        ]
        returned = functional_call(module, identity, tuple(projected), options)
        attn, attn_weights = returned
        out = nnf.linear(
            attn,
            module.out_proj.weight.detach(),
            None if module.out_proj.bias is None else module.out_proj.bias.detach(),
        )
        c_out = call.grads[0] if call.grads[0] is not None else torch.zeros_like(out)
        outputs, cotangents = [out], [c_out]
        c_weights = call.grads[1] if len(call.grads) > 1 else None
        if attn_weights is not None and c_weights is not None:
            outputs.append(attn_weights)
            cotangents.append(c_weights)
        grads = torch.autograd.grad(outputs, projected, cotangents)
    return list(grads), attn.detach()
