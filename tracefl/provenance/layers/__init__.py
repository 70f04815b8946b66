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

#: Traced layer families, in lookup order.
TRACERS: tuple[LayerTracer, ...] = (
    LinearTracer(),
    Conv2dTracer(),
    LayerNormTracer(),
    Conv1DTracer(),
)


def find_tracer(
    module: nn.Module, tracers: tuple[LayerTracer, ...] = TRACERS
) -> LayerTracer | None:
    """Return the tracer handling ``module``, or ``None`` if it is not traced."""
    for tracer in tracers:
        if tracer.matches(module):
            return tracer
    return None


__all__ = [
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
