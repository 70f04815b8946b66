"""Batch layouts of every recorded call, found once per input shape.

A probe forward pass on the first two inputs (three when ``B == 2``) is
compared with the recorded calls (:func:`~tracefl.provenance.layout.find_layout`);
for an output shared by all inputs its consumers are matched in both graphs
(:mod:`tracefl.provenance.shared`). The result is cached per engine, keyed by
the inputs' per-input shapes, and holds no tensors or autograd nodes; a later
call reuses it when its calls fit and re-probes otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor
from torch.autograd.graph import Node

from .call import ModuleCall
from .layers.base import LayerTracer
from .layout import BatchLayout, find_layout
from .recording import logits_of, repeat_inputs, slice_inputs
from .shared import Consumer, ConsumerPlan, match_consumers, plan_of, rematch
from .validation import Inputs, ProvenanceInputError

Forward = Callable[[Inputs], tuple[object, list[ModuleCall]]]
Consumers = dict[tuple[int, int], list[Consumer]]


@dataclass
class LayoutPlan:
    """Batch layouts of the calls of one input shape (no tensors held).

    ``consumers`` maps ``(call index, output index)`` of every shared output to
    the plan of its consumers.
    """

    names: tuple[str, ...]
    layouts: list[dict[str, BatchLayout]]
    shapes: list[dict[str, tuple[int, ...]]]
    consumers: dict[tuple[int, int], tuple[ConsumerPlan, ...]]

    def fits(self, calls: list[ModuleCall], batch: int) -> bool:
        """Whether the plan describes these calls (same layers, shapes fit)."""
        if tuple(c.name for c in calls) != self.names:
            return False
        for call, layouts, shapes in zip(calls, self.layouts, self.shapes, strict=True):
            tensors = call.tensors()
            for key, layout in layouts.items():
                t = tensors.get(key)
                if t is None:
                    return False
                if layout.kind == "shared":
                    if tuple(t.shape) != shapes[key]:
                        return False
                elif (
                    t.dim() <= layout.dim
                    or t.shape[layout.dim] % batch
                    or layout.kind == "dim"
                    and t.shape[layout.dim] != batch
                ):
                    return False
        return True

    def consumers_in(self, calls: list[ModuleCall], root: Node) -> Consumers | None:
        """The consumers of the shared outputs in a new graph, or ``None``."""
        found: Consumers = {}
        for (ci, oj), known in self.consumers.items():
            what = f"output of layer '{calls[ci].name}'"
            consumers = rematch([root], calls[ci].edges[oj], known, what)
            if consumers is None:
                return None
            found[(ci, oj)] = consumers
        return found


def probe_layouts(
    forward: Forward,
    inputs: Inputs,
    calls: list[ModuleCall],
    logits: Tensor,
    tracers: Mapping[str, LayerTracer],
) -> tuple[LayoutPlan, Consumers]:
    """Find every needed layout from a probe pass on two inputs (three if B=2).

    ``tracers`` maps each call's module name to its tracer (which says which
    tensors need a layout); every differentiable output gets one as well.
    """
    batch = logits.shape[0]
    probe_batch = 3 if batch == 2 else 2
    if batch < probe_batch:
        inputs = repeat_inputs(inputs, -(-probe_batch // batch))
    probe_inputs = slice_inputs(inputs, 0, probe_batch)
    probe_out, probe_calls = forward(probe_inputs)
    names = tuple(c.name for c in calls)
    if tuple(c.name for c in probe_calls) != names:
        raise ProvenanceInputError(
            f"the traced layers run differ between a batch of {batch} and of "
            f"{probe_batch} inputs; the model's control flow must not depend on "
            "the batch size"
        )
    probe_root = logits_of(probe_out).grad_fn
    layouts: list[dict[str, BatchLayout]] = []
    shapes: list[dict[str, tuple[int, ...]]] = []
    consumers: Consumers = {}
    for ci, (call, probe_call) in enumerate(zip(calls, probe_calls, strict=True)):
        wanted = set(tracers[call.name].layout_keys(call)) | {
            f"out{i}" for i, e in enumerate(call.edges) if e is not None
        }
        main_t, probe_t = call.tensors(), probe_call.tensors()
        found = {}
        for key in sorted(wanted):
            if key not in main_t or key not in probe_t:
                raise ProvenanceInputError(
                    f"layer '{call.name}' was called with different arguments for "
                    f"{batch} and {probe_batch} inputs ({key!r})"
                )
            what = f"{_describe(key)} of layer '{call.name}'"
            found[key] = find_layout(
                main_t[key], probe_t[key], batch, probe_batch, what
            )
        for oj, edge in enumerate(call.edges):
            if edge is None or found[f"out{oj}"].kind != "shared":
                continue
            probe_edge = probe_call.edges[oj] if oj < len(probe_call.edges) else None
            if probe_edge is None or probe_root is None:
                raise ProvenanceInputError(
                    f"output of layer '{call.name}' is not differentiable in the "
                    "probe pass"
                )
            consumers[(ci, oj)] = match_consumers(
                [logits.grad_fn],
                [probe_root],
                edge,
                probe_edge,
                batch,
                probe_batch,
                f"output of layer '{call.name}' (shared by all inputs)",
            )
        layouts.append(found)
        shapes.append({k: tuple(main_t[k].shape) for k in found})
    plan = LayoutPlan(
        names, layouts, shapes, {k: plan_of(v) for k, v in consumers.items()}
    )
    return plan, consumers


def _describe(key: str) -> str:
    if key.startswith("arg"):
        return f"argument {key[3:]}"
    if key.startswith("kw:"):
        return f"argument {key[3:]!r}"
    return f"output {key[3:]}"
