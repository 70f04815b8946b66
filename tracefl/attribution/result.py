"""What every attribution method returns: :class:`AttributionResult`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from tracefl.provenance import CoverageReport, ProvenanceResult

#: Pseudo-client for what the server added (residual ``r`` minus DP noise).
SERVER_ID = "server"
#: Pseudo-client for the DP noise part of the residual (only with DP).
NOISE_ID = "noise"
PSEUDO_CLIENT_IDS = (SERVER_ID, NOISE_ID)


@dataclass(frozen=True)
class AttributionResult:
    """Per-input scores of the clients (and pseudo-clients) of one method.

    Attributes
    ----------
    method
        Registry name of the method (e.g. ``"paper"``).
    scores
        ``(B, K')`` float64. Columns ``0..K-1`` are the clients, any further
        columns the pseudo-clients ``server`` and ``noise``.
    column_ids
        ``K'`` names of the columns of ``scores``.
    num_clients
        ``K``: how many leading columns are real clients.
    probs
        ``(B, K)`` float64 softmax over the client columns where the method
        defines one (the paper's Eq. 7), else ``None``.
    traced
        ``(B,)`` int64 argmax over the client columns only: pseudo-clients are
        reported, never traced (see :attr:`pseudo_would_win`).
    targets
        ``(B,)`` int64 class whose objective was attributed.
    predicted_labels
        ``(B,)`` int64 class the attributed model predicts.
    seconds
        Wall time the method spent (for stateful methods: over all rounds).
    engine_calls
        Provenance-engine attributions it ran (each one forward + one backward
        over the inputs).
    forward_passes
        Extra model forward passes over the inputs (leave-one-out).
    coverage
        The engine's coverage report of the first engine call (which layers
        were traced, the untraced share of the objective), or ``None`` for
        methods without one.

    """

    method: str
    scores: Tensor
    column_ids: tuple[str, ...]
    num_clients: int
    probs: Tensor | None
    traced: Tensor
    targets: Tensor
    predicted_labels: Tensor
    seconds: float
    engine_calls: int
    forward_passes: int = 0
    coverage: CoverageReport | None = None

    @property
    def client_ids(self) -> tuple[str, ...]:
        """The ``K`` real clients, in the order of the leading columns."""
        return self.column_ids[: self.num_clients]

    @property
    def client_scores(self) -> Tensor:
        """``(B, K)`` scores of the real clients."""
        return self.scores[:, : self.num_clients]

    @property
    def traced_client_ids(self) -> list[str]:
        """Traced client of every input."""
        return [self.column_ids[i] for i in self.traced.tolist()]

    @property
    def pseudo_would_win(self) -> Tensor:
        """``(B,)`` bool: a pseudo-client outscores every client on this input.

        Pseudo-clients are left out of the argmax on purpose (a server or DP
        noise is not an answer to "which client?"); this shows where that
        choice mattered.
        """
        if self.scores.shape[1] == self.num_clients:
            return torch.zeros(self.scores.shape[0], dtype=torch.bool)
        pseudo = self.scores[:, self.num_clients :].max(1).values
        return pseudo > self.client_scores.max(1).values

    def take(self, rows: Tensor) -> AttributionResult:
        """The same result restricted to some inputs (``rows``: (B',) int64)."""
        return dataclasses.replace(
            self,
            scores=self.scores[rows],
            probs=None if self.probs is None else self.probs[rows],
            traced=self.traced[rows],
            targets=self.targets[rows],
            predicted_labels=self.predicted_labels[rows],
        )

    def column(self, column_id: str) -> Tensor:
        """``(B,)`` scores of one client or pseudo-client, by name."""
        if column_id not in self.column_ids:
            raise KeyError(
                f"no column {column_id!r} in the {self.method!r} result; "
                f"columns are {list(self.column_ids)}"
            )
        return self.scores[:, self.column_ids.index(column_id)]


def join_engine_results(
    method: str,
    parts: Sequence[ProvenanceResult],
    *,
    num_clients: int,
    with_probs: bool,
) -> AttributionResult:
    """Join engine calls over column groups into one :class:`AttributionResult`.

    ``parts`` are engine calls on the same inputs and targets whose columns,
    concatenated, are the ``num_clients`` clients then the pseudo-clients.
    """
    scores = torch.cat([p.scores for p in parts], dim=1)
    ids = tuple(cid for p in parts for cid in p.client_ids)
    client_part = scores[:, :num_clients]
    probs = None
    if with_probs:
        first = parts[0]
        # The engine's own softmax when it saw exactly the clients (bit-equal).
        probs = (
            first.probs
            if first.scores.shape[1] == num_clients
            else torch.softmax(client_part, dim=1)
        )
    return AttributionResult(
        method=method,
        scores=scores,
        column_ids=ids,
        num_clients=num_clients,
        probs=probs,
        traced=client_part.argmax(1),
        targets=parts[0].targets,
        predicted_labels=parts[0].predicted_labels,
        seconds=0.0,
        engine_calls=len(parts),
        coverage=parts[0].coverage,
    )
