"""Per-layer-family contribution kernels and the explicit tracer registry.

The registries are plain tuples, consulted in order (the first tracer matching
a module traces it); nothing is registered as an import side effect. To trace a
new family, write a :class:`~tracefl.provenance.layers.base.LayerTracer` (or use
:class:`~tracefl.provenance.layers.generic.GenericTracer` for a module linear in
its parameters) and pass a tuple of tracers as ``layers=``.
"""

from __future__ import annotations

from torch import nn

from .attention import MultiheadAttentionTracer
from .base import Contraction, LayerSpec, LayerTracer, ParamView, Workspace
from .conv import ConvTracer, ConvTransposeTracer
from .conv1d import Conv1DTracer
from .embedding import EmbeddingBagTracer, EmbeddingTracer
from .generic import GenericTracer
from .linear import BilinearTracer, LinearTracer
from .norm import ChannelNormTracer, LayerNormTracer, RMSNormTracer

#: The original artifact's traced families (``layers="paper"``): ``nn.Linear``,
#: ``nn.Conv2d``, ``nn.LayerNorm`` and GPT-2 ``Conv1D`` with plain parameters.
PAPER_TRACERS: tuple[LayerTracer, ...] = (
    LinearTracer(parametrized=False),
    ConvTracer((nn.Conv2d,), parametrized=False),
    LayerNormTracer(parametrized=False),
    Conv1DTracer(parametrized=False),
)
#: Every parameter-linear family the engine knows (``layers="all"``, the default).
TRACERS: tuple[LayerTracer, ...] = (
    MultiheadAttentionTracer(),
    LinearTracer(),
    Conv1DTracer(),
    ConvTracer(),
    ConvTransposeTracer(),
    LayerNormTracer(),
    RMSNormTracer(),
    ChannelNormTracer(),
    EmbeddingTracer(),
    EmbeddingBagTracer(),
    BilinearTracer(),
)
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
    "BilinearTracer",
    "PAPER_TRACERS",
    "TRACERS",
    "ChannelNormTracer",
    "Contraction",
    "Conv1DTracer",
    "ConvTracer",
    "ConvTransposeTracer",
    "EmbeddingBagTracer",
    "EmbeddingTracer",
    "GenericTracer",
    "LayerNormTracer",
    "LayerSpec",
    "LayerTracer",
    "LinearTracer",
    "MultiheadAttentionTracer",
    "ParamView",
    "RMSNormTracer",
    "Workspace",
    "find_tracer",
]
