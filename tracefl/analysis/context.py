"""What the analysis steps of one round read and write.

The steps of :mod:`tracefl.analysis.pipeline` run in order on one
:class:`RoundContext`: each reads what earlier steps produced and adds its own
part, so every step can be tested alone on a hand-built context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tracefl.attribution import AttributionResult
from tracefl.config import TraceFLConfig
from tracefl.dataset import LabeledTensors
from tracefl.fedinfluence import FedInfluence
from tracefl.reply import ClientRecord
from tracefl.strategy import RoundOutcome


@dataclass
class RoundContext:
    """One round's analysis state.

    Attributes
    ----------
    row
        The round's ``rounds.csv`` row, filled by the steps.
    status
        The round's provenance status; ``traced`` once attribution succeeded.
        A step that sets a terminal status (anything but ``pending``/``traced``)
        stops the provenance steps of this round.
    model
        The round's global model (``None`` when the round produced none).
    predictions, losses
        ``(N,)`` predicted labels and per-input losses on the server test split.
    selected
        ``(B,)`` indices into the test split of the inputs to attribute.
    attributions
        Per method name, its result on ``selected``.
    input_rows, client_rows, method_rows, score_rows
        This round's rows of ``inputs.csv``, ``clients.csv``, ``methods.csv``
        and ``scores.csv``.
    fedinfluence
        Fed-Influence's estimator after this round, when the run keeps one.

    """

    cfg: TraceFLConfig
    outcome: RoundOutcome
    test_data: LabeledTensors
    model_factory: Callable[[], nn.Module]
    device: torch.device
    row: dict[str, Any] = field(default_factory=dict)
    status: str = "pending"
    model: nn.Module | None = None
    predictions: torch.Tensor | None = None
    losses: torch.Tensor | None = None
    selected: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    attributions: dict[str, AttributionResult] = field(default_factory=dict)
    input_rows: list[dict[str, Any]] = field(default_factory=list)
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    method_rows: list[dict[str, Any]] = field(default_factory=list)
    score_rows: list[dict[str, Any]] = field(default_factory=list)
    fedinfluence: FedInfluence | None = None

    @property
    def server_round(self) -> int:
        """The round number."""
        return self.outcome.server_round

    @property
    def records(self) -> tuple[ClientRecord, ...]:
        """The fused clients, by partition id."""
        return self.outcome.accepted

    @property
    def label_counts(self) -> np.ndarray:
        """``(K, C)`` label histograms the fused clients reported."""
        return np.stack([r.label_counts for r in self.records])

    @property
    def faulty_participants(self) -> list[int]:
        """Partition ids of the fused clients that are configured faulty."""
        return [
            r.partition_id
            for r in self.records
            if r.partition_id in self.cfg.faulty_client_ids
        ]

    @property
    def provenance_pending(self) -> bool:
        """Whether the provenance steps should still run."""
        return self.status == "pending"

    def stop(self, status: str) -> None:
        """End the provenance steps of this round with ``status``."""
        self.status = status
