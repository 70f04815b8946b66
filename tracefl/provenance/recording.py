"""Run the global model with every call of a traced module recorded.

Hooks are registered in ``try`` and removed in ``finally``; any exception raised
inside the user's forward pass becomes a :class:`ProvenanceInputError` naming the
inputs and the innermost module that was running.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from .call import ModuleCall
from .validation import Inputs, ProvenanceInputError, culprit, describe_inputs


def record_calls(
    model: nn.Module, inputs: Inputs, modules: Mapping[str, nn.Module]
) -> tuple[object, list[ModuleCall]]:
    """``model(inputs)`` with grad enabled, and every call of ``modules`` in order.

    Each call keeps its arguments, its tensor outputs, their gradient edges (as
    recorded when the module returned) and the arguments' versions.
    """
    calls: list[ModuleCall] = []

    def make_hook(name: str):
        def hook(module, args, kwargs, output):
            outs = tensor_outputs(output)
            edges = tuple(
                get_gradient_edge(o) if o.requires_grad else None for o in outs
            )
            call = ModuleCall(name, module, tuple(args), dict(kwargs), outs, edges, {})
            call.versions = {
                key: t._version
                for key, t in call.tensors().items()
                if not key.startswith("out")
            }
            calls.append(call)

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(
                module.register_forward_hook(make_hook(name), with_kwargs=True)
            )
        with torch.enable_grad():
            try:
                out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
            except ProvenanceInputError:
                raise
            except Exception as err:
                raise ProvenanceInputError(
                    f"global model failed on inputs ({describe_inputs(inputs)})"
                    f"{culprit(err, model)}: {type(err).__name__}: {err}"
                ) from err
    finally:
        for h in handles:
            h.remove()
    return out, calls


def tensor_outputs(output: object) -> tuple[Tensor, ...]:
    """The tensors of a module's output (a tensor, or a tuple/list of them)."""
    if isinstance(output, Tensor):
        return (output,)
    if isinstance(output, (tuple, list)):
        return tuple(o for o in output if isinstance(o, Tensor))
    return ()


def logits_of(out: object) -> Tensor:
    """Extract ``(B, C)`` logits from a tensor, ``.logits`` object or mapping."""
    if isinstance(out, Tensor):
        logits = out
    elif isinstance(getattr(out, "logits", None), Tensor):
        logits = out.logits  # type: ignore[attr-defined]
    elif isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        logits = out["logits"]
    else:
        raise ProvenanceInputError(
            f"model output of type {type(out).__name__} has no logits tensor"
        )
    if logits.dim() != 2:
        raise ProvenanceInputError(
            f"model logits must have shape (B, C), got {tuple(logits.shape)}"
        )
    return logits


def signature(inputs: Inputs) -> tuple:
    """Everything of ``inputs`` but the batch size: per-input shapes and dtypes."""
    if isinstance(inputs, Tensor):
        return (tuple(inputs.shape[1:]), inputs.dtype)
    return tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in inputs.items())


def slice_inputs(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Inputs ``start:stop`` of the batch."""
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {k: v[start:stop] for k, v in inputs.items()}


def repeat_inputs(inputs: Inputs, times: int) -> Inputs:
    """The batch repeated ``times`` times along dimension 0."""
    if isinstance(inputs, Tensor):
        return torch.cat([inputs] * times)
    return {k: torch.cat([v] * times) for k, v in inputs.items()}


def inputs_to(inputs: Inputs, device: torch.device) -> Inputs:
    """``inputs`` on ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {k: v.to(device) for k, v in inputs.items()}
