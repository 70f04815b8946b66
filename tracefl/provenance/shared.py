"""Per-input gradients of a layer output shared by all inputs.

A traced layer may run once for the whole batch on a tensor that does not
depend on the input, e.g. BERT's and GPT-2's position embeddings (ids ``(1, T)``)
or a projection of a learned table. Its output ``o`` is then broadcast into the
batch, and one backward pass only gives ``sum_b dy_b/do``; Eq. 5 needs each
``dy_b/do``.

They are recovered at the *consumers* of ``o``: the autograd nodes that take
``o`` as an input. For a consumer whose output is batched (its batch layout is
found like any other, from the probe pass), ``dy/d(consumer output)`` holds each
input's gradient separately; pushing it through the consumer's backward once
gives, for an elementwise consumer (the broadcast ``+``), the gradient with
respect to ``o`` *before* the broadcast reduction, which is split by input and
reduced to ``o``'s shape; any other consumer is pushed once per input with the
gradient of the other inputs masked to zero. A consumer whose output is shared
as well is followed recursively. All exact; the cost is one node call (or ``B``)
per consumer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, Node

from .layout import BatchLayout, find_layout_of_shapes
from .validation import ProvenanceInputError

#: How deep a chain of shared tensors is followed before giving up.
MAX_DEPTH = 32


@dataclass(frozen=True)
class ConsumerPlan:
    """What is cached of a :class:`Consumer`.

    No autograd node (that would keep a whole graph alive), only the node type,
    the input index and the layout.
    """

    kind: str
    index: int
    layout: BatchLayout
    below: tuple[ConsumerPlan, ...] = ()


def plan_of(consumers: list[Consumer]) -> tuple[ConsumerPlan, ...]:
    """The node-free plan of ``consumers``."""
    return tuple(
        ConsumerPlan(type(c.node).__name__, c.index, c.layout, plan_of(c.below))
        for c in consumers
    )


@dataclass
class Consumer:
    """One consumer of a shared tensor (in the forward pass being attributed).

    Attributes
    ----------
    node
        The autograd node taking the shared tensor as input ``index``.
    index
        Which of the node's inputs the shared tensor is.
    layout
        Batch layout of the node's output.
    below
        For a shared node output: its own consumers.

    """

    node: Node
    index: int
    layout: BatchLayout
    below: list[Consumer] = field(default_factory=list)


def consumers_of(roots: Iterable[Node], edge: GradientEdge) -> list[tuple[Node, int]]:
    """``(node, input index)`` of every node in the graph that consumes ``edge``.

    Walks the whole graph below ``roots`` once, in a deterministic order.
    """
    found = []
    seen: set[int] = set()
    stack = [n for n in roots if n is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for i, (nxt, nr) in enumerate(node.next_functions):
            if nxt is None:
                continue
            if nxt is edge.node and nr == edge.output_nr:
                found.append((node, i))
            if id(nxt) not in seen:
                stack.append(nxt)
    return found


def output_shape(node: Node, what: str) -> tuple[int, ...]:
    """Shape of the single output of the forward op ``node`` belongs to."""
    metadata = getattr(node, "_input_metadata", None)
    if metadata is None or len(metadata) != 1:
        raise ProvenanceInputError(
            f"cannot split the gradient of the {what} by input: it is consumed by "
            f"{type(node).__name__}, whose outputs the engine cannot inspect"
        )
    return tuple(metadata[0].shape)


def match_consumers(
    roots: Iterable[Node],
    probe_roots: Iterable[Node],
    edge: GradientEdge,
    probe_edge: GradientEdge,
    batch: int,
    probe_batch: int,
    what: str,
    depth: int = 0,
) -> list[Consumer]:
    """Consumers of a shared tensor, with their output layouts, from the probe."""
    if depth > MAX_DEPTH:
        raise ProvenanceInputError(
            f"cannot split the gradient of the {what} by input: more than "
            f"{MAX_DEPTH} shared operations follow it"
        )
    roots, probe_roots = list(roots), list(probe_roots)
    mains = consumers_of(roots, edge)
    probes = consumers_of(probe_roots, probe_edge)
    if [type(n).__name__ for n, _ in mains] != [type(n).__name__ for n, _ in probes]:
        raise ProvenanceInputError(
            f"cannot split the gradient of the {what} by input: its consumers "
            "differ between batch sizes"
        )
    out = []
    for (node, index), (probe_node, _) in zip(mains, probes, strict=True):
        name = f"output of {type(node).__name__} after the {what}"
        layout = find_layout_of_shapes(
            output_shape(node, what),
            output_shape(probe_node, what),
            batch,
            probe_batch,
            name,
        )
        consumer = Consumer(node, index, layout)
        if layout.kind == "shared":
            consumer.below = match_consumers(
                roots, probe_roots, GradientEdge(node, 0), GradientEdge(probe_node, 0),
                batch, probe_batch, what, depth + 1,
            )  # fmt: skip
        out.append(consumer)
    return out


def rematch(
    roots: Iterable[Node],
    edge: GradientEdge,
    known: tuple[ConsumerPlan, ...],
    what: str,
) -> list[Consumer] | None:
    """The consumers of ``edge`` in a new graph with the layouts of ``known``.

    ``None`` if the graph no longer matches the plan.
    """
    roots = list(roots)
    mains = consumers_of(roots, edge)
    if [type(n).__name__ for n, _ in mains] != [c.kind for c in known]:
        return None
    out = []
    for (node, index), old in zip(mains, known, strict=True):
        consumer = Consumer(node, index, old.layout)
        if old.layout.kind == "shared":
            below = rematch(roots, GradientEdge(node, 0), old.below, what)
            if below is None:
                return None
            consumer.below = below
        out.append(consumer)
    return out


def batched_edges(consumers: list[Consumer]) -> list[GradientEdge]:
    """Output edges of every batched consumer (their gradients are needed)."""
    edges = []
    for c in consumers:
        if c.layout.kind == "shared":
            edges += batched_edges(c.below)
        else:
            edges.append(GradientEdge(c.node, 0))
    return edges


def per_input_grads(
    consumers: list[Consumer],
    grads: dict[tuple[int, int], Tensor | None],
    shape: tuple[int, ...],
    batch: int,
) -> Tensor | None:
    """``(B, *shape)`` per-input gradients of a shared tensor of ``shape``.

    ``grads`` maps ``(id(node), 0)`` of every batched consumer to the gradient of
    ``y`` w.r.t. its output. ``None`` if ``y`` does not depend on the tensor.
    """
    total: Tensor | None = None
    for c in consumers:
        if c.layout.kind == "shared":
            below = per_input_grads(
                c.below, grads, output_shape(c.node, "tensor"), batch
            )
            if below is None:
                continue
            part = torch.stack([_pushed(c, g, shape) for g in below])
        else:
            g = grads.get((id(c.node), 0))
            if g is None:
                continue
            part = _split(c, g, shape, batch)
        total = part if total is None else total + part
    return total


def _pushed(c: Consumer, grad_out: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Gradient w.r.t. input ``c.index`` of ``c.node`` for one output gradient."""
    result = c.node(grad_out)
    g = result[c.index] if isinstance(result, tuple) else result
    return g.sum_to_size(shape) if tuple(g.shape) != shape else g


def _split(c: Consumer, grad_out: Tensor, shape: tuple[int, ...], batch: int) -> Tensor:
    """Per-input gradients w.r.t. the shared input of a batched consumer."""
    result = c.node(grad_out)
    g = result[c.index] if isinstance(result, tuple) else result
    if (
        g is not None
        and tuple(g.shape) == tuple(grad_out.shape)
        and tuple(g.shape) != shape
    ):
        # Elementwise consumer: the gradient before the broadcast reduction.
        per_input = c.layout.to_batch_first(g, batch)
        return torch.stack(
            [p.unsqueeze(c.layout.dim).sum_to_size(shape) for p in per_input]
        )
    rows = []
    per_input_out = c.layout.to_batch_first(grad_out, batch)
    for b in range(batch):
        masked = torch.zeros_like(grad_out)
        c.layout.to_batch_first(masked, batch)[b] = per_input_out[b]
        rows.append(_pushed(c, masked, shape))
    return torch.stack(rows)
