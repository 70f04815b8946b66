"""Neuron provenance: attribute a global model's prediction to FL clients.

Flower-free; transformers is optional (only needed for GPT-2 ``Conv1D`` layers).
"""

from .coverage import ProvenanceCoverageWarning
from .engine import NeuronProvenance
from .layers import LAYER_SETS, PAPER_TRACERS, TRACERS, GenericTracer, LayerTracer
from .objective import OBJECTIVES
from .result import CoverageReport, ProvenanceResult, TracedLayer, UntracedParameter
from .validation import ProvenanceInputError

__all__ = [
    "LAYER_SETS",
    "OBJECTIVES",
    "PAPER_TRACERS",
    "TRACERS",
    "CoverageReport",
    "GenericTracer",
    "LayerTracer",
    "NeuronProvenance",
    "ProvenanceCoverageWarning",
    "ProvenanceInputError",
    "ProvenanceResult",
    "TracedLayer",
    "UntracedParameter",
]
