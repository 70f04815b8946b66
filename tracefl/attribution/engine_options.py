"""How the methods call the provenance engine: one options object per method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tracefl.provenance import NeuronProvenance
from tracefl.provenance.layers import LAYER_SETS
from tracefl.provenance.objective import OBJECTIVES

from .errors import AttributionError


@dataclass(frozen=True)
class EngineOptions:
    """Engine settings shared by every call a method makes.

    Attributes
    ----------
    objective
        ``"logit"`` (raw logit of the target, the paper's ``y``),
        ``"log_softmax"`` (``log p(target)``) or ``"margin"`` (target logit
        minus the largest other logit).
    layers
        ``"all"``: every layer family the engine traces; ``"paper"``: the
        original artifact's (Linear, Conv2d, LayerNorm, GPT-2 Conv1D).
    decay, enable_beta
        Layer weights ``beta_l = decay ** (L - 1 - l)`` (1 when disabled).
    device
        Where the engine computes (default: the model's device).
    chunk_size
        Inputs per engine chunk (bounds memory).
    client_chunk_size
        Parameter sets the engine gathers at once (``None``: all); bounds
        memory with many clients.

    """

    objective: str = "log_softmax"
    layers: str = "all"
    decay: float = 0.9
    enable_beta: bool = False
    device: str | torch.device | None = None
    chunk_size: int = 32
    client_chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise AttributionError(
                f"objective={self.objective!r} is not one of {list(OBJECTIVES)}"
            )
        if self.layers not in LAYER_SETS:
            raise AttributionError(
                f"layers={self.layers!r} is not one of {sorted(LAYER_SETS)}"
            )

    def engine(
        self,
        model: nn.Module,
        param_sets: Sequence[Mapping[str, Tensor]],
        weights: Sequence[float],
        ids: Sequence[str],
        *,
        scale_by_data_share: bool = False,
    ) -> NeuronProvenance:
        """An engine over ``len(param_sets)`` parameter sets of the model's shapes."""
        return NeuronProvenance(
            model,
            list(param_sets),
            list(weights),
            list(ids),
            decay=self.decay,
            enable_beta=self.enable_beta,
            scale_by_data_share=scale_by_data_share,
            device=self.device,
            chunk_size=self.chunk_size,
            client_chunk_size=self.client_chunk_size,
            objective=self.objective,
            layers=self.layers,
        )
