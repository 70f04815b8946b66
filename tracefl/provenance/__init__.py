"""Neuron provenance: attribute a global model's prediction to FL clients.

Flower-free; transformers is optional (only needed for GPT-2 ``Conv1D`` layers).
"""

from .engine import NeuronProvenance
from .layers import TRACERS, LayerTracer
from .result import ProvenanceResult
from .validation import ProvenanceInputError

__all__ = [
    "TRACERS",
    "LayerTracer",
    "NeuronProvenance",
    "ProvenanceInputError",
    "ProvenanceResult",
]
