"""Literal reference implementation of TraceFL's Algorithm 1 (test helper).

Deliberately simple and slow: one input at a time, one layer call at a time, one
client at a time, re-running a copy of the layer with the client's parameters
on the captured global input and contracting its output with ``dy/d(output)``.
Because every input runs alone, no batch layout is ever needed (whatever layout
a layer uses, its whole output belongs to that input).

``nn.MultiheadAttention`` (``layers="all"``) is replaced, in the oracle's copy of
the model, by :class:`ExplicitAttention`: the same computation written out with
an input-projection module and an ``nn.Linear`` output projection, so that its
projections are ordinary layer calls.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn
from torch.nn.utils import parametrize

ALL_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.Bilinear,
)
PAPER_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.LayerNorm)


def _gpt2_conv1d() -> tuple[type, ...]:
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    return (pytorch_utils.Conv1D,) if pytorch_utils is not None else ()


class InProjection(nn.Module):
    """``q, k, v = query @ W_q.T + b_q, key @ W_k.T + b_k, value @ W_v.T + b_v``.

    One layer holding the packed ``(3E, E)`` weight of ``nn.MultiheadAttention``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, query: Tensor, key: Tensor, value: Tensor):
        ws = self.weight.chunk(3)
        bs = (None, None, None) if self.bias is None else self.bias.chunk(3)
        return tuple(
            nnf.linear(x, w, b)
            for x, w, b in zip((query, key, value), ws, bs, strict=True)
        )


class ExplicitAttention(nn.Module):
    """``nn.MultiheadAttention`` written out (no bias_k/bias_v, no zero attention).

    ``sources`` maps each of its parameters to ``(state key, rows)`` of the
    original module, so that client parameters can be looked up.
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        assert mha.bias_k is None and not mha.add_zero_attn
        e = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.fused = mha._qkv_same_embed_dim
        bias = mha.in_proj_bias
        self.sources: dict[str, tuple[str, slice | None]] = {}
        if self.fused:
            self.in_proj = InProjection(mha.in_proj_weight, bias)
            self.sources["in_proj.weight"] = ("in_proj_weight", None)
            if bias is not None:
                self.sources["in_proj.bias"] = ("in_proj_bias", None)
        else:
            for i, part in enumerate("qkv"):
                w = getattr(mha, f"{part}_proj_weight")
                proj = nn.Linear(w.shape[1], e, bias=bias is not None, dtype=w.dtype)
                with torch.no_grad():
                    proj.weight.copy_(w)
                    if bias is not None:
                        proj.bias.copy_(bias[i * e : (i + 1) * e])
                setattr(self, f"{part}_proj", proj)
                self.sources[f"{part}_proj.weight"] = (f"{part}_proj_weight", None)
                if bias is not None:
                    rows = slice(i * e, (i + 1) * e)
                    self.sources[f"{part}_proj.bias"] = ("in_proj_bias", rows)
        self.out_proj = nn.Linear(
            e, e, bias=mha.out_proj.bias is not None, dtype=mha.out_proj.weight.dtype
        )
        self.out_proj.load_state_dict(mha.out_proj.state_dict())
        self.sources["out_proj.weight"] = ("out_proj.weight", None)
        if mha.out_proj.bias is not None:
            self.sources["out_proj.bias"] = ("out_proj.bias", None)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        if self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if self.fused:
            q, k, v = self.in_proj(query, key, value)
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        t, b, e = q.shape
        s = k.shape[0]
        h = self.num_heads
        d = e // h
        q = q.reshape(t, b * h, d).transpose(0, 1)
        k = k.reshape(s, b * h, d).transpose(0, 1)
        v = v.reshape(s, b * h, d).transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(d)  # (B*H, T, S)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 3 else attn_mask.expand(b * h, t, s)
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(mask, float("-inf"))
            else:
                scores = scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(b, 1, 1, s).expand(b, h, t, s)
            pad = pad.reshape(b * h, t, s)
            if pad.dtype == torch.bool:
                scores = scores.masked_fill(pad, float("-inf"))
            else:
                scores = scores + pad
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(0, 1).reshape(t * b, e)
        out = self.out_proj(out).view(t, b, e)
        if self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.view(b, h, t, s)
        return out, weights.mean(1) if average_attn_weights else weights


def explicit_copy(
    model: nn.Module,
) -> tuple[nn.Module, dict[str, tuple[str, slice | None]]]:
    """A copy of ``model`` with every ``nn.MultiheadAttention`` written out.

    Returns the copy and a map from each replaced parameter's name in the copy
    to ``(state key in the original, rows)``.
    """
    model = copy.deepcopy(model)
    sources: dict[str, tuple[str, slice | None]] = {}
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                explicit = ExplicitAttention(child)
                setattr(module, child_name, explicit)
                prefix = f"{name}.{child_name}" if name else child_name
                for pname, (key, rows) in explicit.sources.items():
                    sources[f"{prefix}.{pname}"] = (f"{prefix}.{key}", rows)
    return model, sources


def _traced_modules(
    model: nn.Module, layers: str, extra_types: tuple[type, ...]
) -> list[nn.Module]:
    if layers == "paper":
        types = (*PAPER_TYPES, *_gpt2_conv1d())
    else:
        types = (*ALL_TYPES, *_gpt2_conv1d(), InProjection)
    traced: list[nn.Module] = []
    inside: list[nn.Module] = []
    for module in model.modules():
        if any(
            module is not o and any(module is m for m in o.modules()) for o in inside
        ):
            continue
        if extra_types and isinstance(module, extra_types):
            traced.append(module)
            inside.append(module)
            continue
        if not isinstance(module, types):
            continue
        if layers == "paper":
            if isinstance(getattr(module, "weight", None), nn.Parameter) and not (
                parametrize.is_parametrized(module)
            ):
                traced.append(module)
            continue
        if isinstance(module, nn.Embedding) and module.max_norm is not None:
            continue
        if isinstance(module, nn.EmbeddingBag) and (
            module.mode == "max" or module.max_norm is not None
        ):
            continue
        if any(True for _ in module.parameters()):
            traced.append(module)
    return traced


def _client_state(client: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return client.state_dict() if isinstance(client, nn.Module) else client


def _tensors(output) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    return [o for o in output if isinstance(o, Tensor)]


def _make_recording_hook(captured: list):
    """Forward hook appending ``(module, args, kwargs, outputs)`` for every call."""

    def hook(module, args, kwargs, output):
        outs = _tensors(output)
        clones = [o.clone() for o in outs]  # later in-place ops must not alter them
        saved_args = tuple(
            a.detach().clone() if isinstance(a, Tensor) else a for a in args
        )
        saved_kwargs = {
            k: v.detach().clone() if isinstance(v, Tensor) else v
            for k, v in kwargs.items()
        }
        captured.append((module, saved_args, saved_kwargs, outs))
        if isinstance(output, Tensor):
            return clones[0]
        it = iter(clones)
        return type(output)(next(it) if isinstance(o, Tensor) else o for o in output)

    return hook


def _objective(logits: Tensor, chosen: int, objective: str) -> Tensor:
    """``y`` for one input's ``(C,)`` logits, written out per definition."""
    if objective == "logit":
        return logits[chosen]
    if objective == "log_softmax":
        return torch.log(torch.exp(logits) / torch.exp(logits).sum())[chosen]
    if objective == "margin":
        others = [logits[j] for j in range(logits.shape[0]) if j != chosen]
        best = others[0]
        for value in others[1:]:
            best = torch.maximum(best, value)
        return logits[chosen] - best
    raise ValueError(objective)


def oracle_scores(
    global_model: nn.Module,
    client_models: Sequence[nn.Module | Mapping[str, Tensor]],
    client_weights: Sequence[float],
    inputs: Tensor | Mapping[str, Tensor],
    *,
    decay: float = 0.9,
    enable_beta: bool = True,
    scale_by_data_share: bool = False,
    target: int | Tensor | None = None,
    objective: str = "logit",
    layers: str = "paper",
    extra_types: tuple[type, ...] = (),
) -> tuple[Tensor, list[str]]:
    """Return raw scores ``T`` of shape ``(B, K)`` (float64) and the layer names.

    ``target`` is the class of every input (``int``), one class per input
    (``(B,)`` tensor) or ``None`` (the predicted class); ``objective`` is what
    ``y`` is: the target's logit, its log-softmax, or its margin over the best
    other class. ``layers`` is ``"paper"`` (Linear, Conv2d, LayerNorm, GPT-2
    Conv1D) or ``"all"``; ``extra_types`` are traced whole (a user's own
    parameter-linear modules). A layer called several times sums its calls; its
    ``beta`` is that of its first call.
    """
    if layers == "all":
        global_model, sources = explicit_copy(global_model)
    else:
        global_model, sources = copy.deepcopy(global_model), {}
    global_model.eval()
    for p in global_model.parameters():
        p.requires_grad_(True)  # so that every layer output is differentiable
    states = [_client_state(c) for c in client_models]
    total = sum(client_weights)
    shares = [w / total for w in client_weights]
    names = {m: n for n, m in global_model.named_modules()}
    traced = _traced_modules(global_model, layers, extra_types)
    if isinstance(inputs, Tensor):
        batch = inputs.shape[0]
    else:
        batch = next(iter(inputs.values())).shape[0]

    rows = []
    layer_names: list[str] = []
    for b in range(batch):
        # Forward on a single input, recording each traced layer call.
        captured = []  # (module, args, kwargs, outputs)
        hook = _make_recording_hook(captured)
        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in traced]
        try:
            if isinstance(inputs, Tensor):
                out = global_model(inputs[b : b + 1])
            else:
                out = global_model(**{k: v[b : b + 1] for k, v in inputs.items()})
        finally:
            for h in handles:
                h.remove()
        logits = out if isinstance(out, Tensor) else out.logits
        if target is None:
            chosen = int(logits[0].argmax())
        elif isinstance(target, int):
            chosen = target
        else:
            chosen = int(target[b])
        y = _objective(logits[0], chosen, objective)
        outputs = [o for _, _, _, outs in captured for o in outs]
        grads = list(torch.autograd.grad(y, outputs, allow_unused=True))

        order: list[nn.Module] = []
        for module, _, _, _ in captured:
            if module not in order:
                order.append(module)
        num_layers = len(order)
        totals = [0.0] * len(states)
        for module, args, kwargs, outs in captured:
            cs = [grads.pop(0) for _ in outs]
            layer_index = order.index(module)
            beta = decay ** (num_layers - 1 - layer_index) if enable_beta else 1.0
            name = names[module]
            client_layer = copy.deepcopy(module)
            for k, state in enumerate(states):
                scale = shares[k] if scale_by_data_share else 1.0
                with torch.no_grad():
                    for pname, p in client_layer.named_parameters():
                        full = f"{name}.{pname}" if name else pname
                        key, part = sources.get(full, (full, None))
                        value = state[key] if part is None else state[key][part]
                        p.copy_(value * scale)
                    client_outs = _tensors(client_layer(*args, **kwargs))
                    contribution = 0.0
                    for c, o in zip(cs, client_outs, strict=True):
                        if c is not None:
                            contribution += float((o * c).sum())
                totals[k] += beta * contribution
        rows.append(totals)
        layer_names = [names[m] for m in order]
        global_model.zero_grad(set_to_none=True)
    return torch.tensor(rows, dtype=torch.float64), layer_names


def oracle_probs(scores: Tensor) -> Tensor:
    """Softmax over clients, written out (Eq. 7)."""
    out = torch.empty_like(scores)
    for b in range(scores.shape[0]):
        m = max(scores[b].tolist())
        exps = [math.exp(s - m) for s in scores[b].tolist()]
        total = sum(exps)
        for k, e in enumerate(exps):
            out[b, k] = e / total
    return out
