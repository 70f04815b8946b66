"""Per-layer-family contribution kernels and the explicit tracer registry.

The registry is a plain tuple, consulted in order; nothing is registered as an
import side effect. To trace a new layer family, write a
:class:`~tracefl.provenance.layers.base.LayerTracer` and add it to
``TRACERS`` (or pass a custom tuple to the engine).
"""

from __future__ import annotations

from torch import nn

from .base import LayerTracer, StackedParams, Workspace
from .conv1d import Conv1DTracer
from .conv2d import Conv2dTracer
from .layernorm import LayerNormTracer
from .linear import LinearTracer

#: The original artifact's traced families (``layers="paper"``), in lookup order.
PAPER_TRACERS: tuple[LayerTracer, ...] = (
    LinearTracer(),
    Conv2dTracer(),
    LayerNormTracer(),
    Conv1DTracer(),
)
#: Every parameter-linear family the engine knows (``layers="all"``, the default).
TRACERS: tuple[LayerTracer, ...] = PAPER_TRACERS
#: Named layer sets accepted by ``NeuronProvenance(layers=...)``.
LAYER_SETS: dict[str, tuple[LayerTracer, ...]] = {
    "all": TRACERS,
    "paper": PAPER_TRACERS,
}


def find_tracer(
    module: nn.Module, tracers: tuple[LayerTracer, ...] = TRACERS
) -> LayerTracer | None:
    """Return the tracer handling ``module``, or ``None`` if it is not traced."""
    for tracer in tracers:
        if tracer.matches(module):
            return tracer
    return None


__all__ = [
    "LAYER_SETS",
    "PAPER_TRACERS",
    "TRACERS",
    "Conv1DTracer",
    "Conv2dTracer",
    "LayerNormTracer",
    "LayerTracer",
    "LinearTracer",
    "StackedParams",
    "Workspace",
    "find_tracer",
]
