"""Interface of the per-round methods: one round's model against its clients."""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from tracefl.provenance.validation import Inputs

from .errors import AttributionError
from .fused_round import FusedRound
from .result import AttributionResult
from .terms import check_client_ids, check_model_holds

Target = int | Tensor | None


class RoundMethod(ABC):
    """Attribute the global model ``theta_t`` of one round to the round's clients.

    Subclasses implement :meth:`_attribute`; :meth:`attribute` validates the
    round and the model, times the call and formats the result.
    """

    #: Registry name.
    name: ClassVar[str]

    def attribute(
        self,
        rnd: FusedRound,
        model: nn.Module,
        inputs: Inputs,
        *,
        target: Target = None,
    ) -> AttributionResult:
        """Scores of the round's clients for each input.

        Parameters
        ----------
        rnd
            The round (``theta_t = sum_k A_k theta_k + r``).
        model
            The global model holding ``rnd.aggregate`` (buffers included).
        inputs
            ``(B, ...)`` tensor or mapping of ``(B, ...)`` tensors.
        target
            Class to attribute: ``None`` (the model's prediction), an int, or a
            ``(B,)`` int64 tensor.

        Returns
        -------
        AttributionResult
            ``(B, K')`` scores (clients, then pseudo-clients).

        """
        if not isinstance(rnd, FusedRound):
            raise AttributionError(f"rnd must be a FusedRound, got {type(rnd)!r}")
        check_client_ids(rnd.client_ids)
        check_model_holds(model, rnd.aggregate, f"round {rnd.server_round}'s aggregate")
        start = time.perf_counter()
        result = self._attribute(rnd, model, inputs, target)
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    @abstractmethod
    def _attribute(
        self, rnd: FusedRound, model: nn.Module, inputs: Inputs, target: Target
    ) -> AttributionResult:
        """The method proper (``seconds`` is filled in by :meth:`attribute`)."""
