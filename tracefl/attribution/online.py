"""Cross-round (a), online: whole-training scores for fixed query inputs.

The server fixes ``B`` query inputs ``x_b`` and their target classes ``c_b``
before training. After every round ``t`` it adds that round's per-client terms,
computed at that round's global model ``theta_t``::

    S_k(b)  += <g_t(b), A_k^t * Delta_k^t>       (``cross-round``)
    S'_k(b) += <g_t(b), Delta_k^t>               (``cross-round-unweighted``)

with ``g_t(b) = d f(x_b, c_b)/d theta`` at ``theta_t`` (``f`` = ``log p(c_b)`` by
default) and ``Delta_k^t = theta_k^t - theta_{t-1}``. A client absent from a
round adds nothing that round, so partial participation and clients that skip
rounds need nothing special; the ``server`` and (with DP) ``noise``
pseudo-clients accumulate the residual updates the same way (their weighted and
unweighted terms are the same). After round ``T`` each query has a score per
client ever seen: ``sum_t`` of that client's contribution to the first-order
change of ``f`` in round ``t``, so early rounds, where the model learns the
label, are not forgotten as single-round scores shrink with convergence.

Memory: ``2 x B x (clients ever seen + 2)`` float64 numbers. Cost: one engine
attribution per round over the ``B`` queries with the round's ``K`` updates
(``2K`` when the shares ``A_k`` are per-coordinate, since then the weighted
term is not ``a_k`` times the unweighted one) and 1-2 pseudo-client sets.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from tracefl.provenance.validation import Inputs, batch_size_of

from .engine_options import EngineOptions
from .errors import AttributionError
from .fused_round import FusedRound
from .result import AttributionResult
from .terms import (
    check_client_ids,
    check_model_holds,
    client_fused_update,
    client_update,
    pseudo_ids,
    residual_update_sets,
    scalar_shares,
    sum_states,
)


class CrossRoundOnline:
    """Accumulate every round's per-client terms on fixed query inputs.

    Parameters
    ----------
    queries
        ``(B, ...)`` tensor or mapping of ``(B, ...)`` tensors, fixed for the run.
    targets
        ``(B,)`` int64 class attributed for each query (its true label, say):
        fixed, so that the per-round terms add up to one quantity.
    objective, layers, decay, enable_beta, device, chunk_size, client_chunk_size
        See :class:`~tracefl.attribution.engine_options.EngineOptions`.
    include_server
        Also accumulate the ``server``/``noise`` pseudo-clients.

    """

    def __init__(
        self,
        queries: Inputs,
        targets: Tensor,
        *,
        objective: str = "log_softmax",
        layers: str = "all",
        decay: float = 0.9,
        enable_beta: bool = False,
        include_server: bool = True,
        device: str | None = None,
        chunk_size: int = 32,
        client_chunk_size: int | None = None,
    ) -> None:
        batch = batch_size_of(queries)
        if (
            not isinstance(targets, Tensor)
            or targets.shape != (batch,)
            or targets.dtype != torch.int64
        ):
            got = (
                f"{tuple(targets.shape)} {targets.dtype}"
                if isinstance(targets, Tensor)
                else repr(type(targets))
            )
            raise AttributionError(
                f"targets must be a ({batch},) int64 tensor (one per query), got {got}"
            )
        self.queries = queries
        self.targets = targets.detach().clone()
        self.include_server = bool(include_server)
        self.options = EngineOptions(
            objective=objective,
            layers=layers,
            decay=decay,
            enable_beta=enable_beta,
            device=device,
            chunk_size=chunk_size,
            client_chunk_size=client_chunk_size,
        )
        self._weighted: dict[str, Tensor] = {}
        self._unweighted: dict[str, Tensor] = {}
        self._client_ids: list[str] = []
        self._pseudo_ids: list[str] = []
        self._rounds: list[int] = []
        self._predicted: Tensor | None = None
        self.seconds = 0.0
        self.engine_calls = 0

    @property
    def rounds(self) -> tuple[int, ...]:
        """Rounds observed so far."""
        return tuple(self._rounds)

    @property
    def client_ids(self) -> tuple[str, ...]:
        """Clients ever seen, in order of first appearance."""
        return tuple(self._client_ids)

    def observe(self, rnd: FusedRound, model: nn.Module) -> None:
        """Add round ``rnd``'s terms, computed at its global model ``model``.

        Rounds must come in increasing order, each at most once.
        """
        if not isinstance(rnd, FusedRound):
            raise AttributionError(f"rnd must be a FusedRound, got {type(rnd)!r}")
        if self._rounds and rnd.server_round <= self._rounds[-1]:
            raise AttributionError(
                f"round {rnd.server_round} observed after round {self._rounds[-1]}; "
                "rounds must be observed once each, in increasing order"
            )
        check_client_ids(rnd.client_ids)
        check_model_holds(model, rnd.aggregate, f"round {rnd.server_round}'s aggregate")
        start = time.perf_counter()
        k = rnd.num_clients
        shares = scalar_shares(rnd)
        sets = [client_update(rnd, i) for i in range(k)]
        if shares is None:  # per-coordinate shares: weighted terms need own sets
            sets += [client_fused_update(rnd, i) for i in range(k)]
        if self.include_server:
            fused = (
                sets[k:]
                if shares is None
                else (
                    {key: a * v for key, v in delta.items()}
                    for a, delta in zip(shares, sets, strict=True)
                )
            )
            sets += residual_update_sets(rnd, sum_states(fused)).values()
        # Columns: K updates, [K fused updates], pseudo-clients (positional ids).
        ids = [str(i) for i in range(len(sets))]
        out = self.options.engine(model, sets, [1.0] * len(sets), ids).attribute(
            self.queries, target=self.targets
        )
        scores = out.scores.detach().cpu()
        for i, cid in enumerate(rnd.client_ids):
            raw = scores[:, i]
            weighted = raw * shares[i] if shares is not None else scores[:, k + i]
            self._add(cid, raw, weighted, self._client_ids)
        offset = k if shares is not None else 2 * k
        for i, pid in enumerate(pseudo_ids(rnd) if self.include_server else ()):
            term = scores[:, offset + i]
            self._add(pid, term, term, self._pseudo_ids)
        self._rounds.append(rnd.server_round)
        self._predicted = out.predicted_labels.detach().cpu()
        self.engine_calls += 1
        self.seconds += time.perf_counter() - start

    def result(self, *, fusion_weighted: bool = True) -> AttributionResult:
        """Whole-training scores after the rounds observed so far.

        Parameters
        ----------
        fusion_weighted
            ``True``: ``sum_t <g_t, A_k^t Delta_k^t>`` (``cross-round``);
            ``False``: ``sum_t <g_t, Delta_k^t>`` (``cross-round-unweighted``).

        Returns
        -------
        AttributionResult
            ``(B, K_seen + pseudo)`` scores; ``predicted_labels`` are those of
            the last observed round's model; cost summed over all rounds.

        """
        if not self._rounds:
            raise AttributionError(
                "cross-round scores need at least one observed round; call "
                "observe(round, model) after every aggregation"
            )
        table = self._weighted if fusion_weighted else self._unweighted
        ids = self._client_ids + self._pseudo_ids
        scores = torch.stack([table[i] for i in ids], dim=1)
        k = len(self._client_ids)
        assert self._predicted is not None
        return AttributionResult(
            method="cross-round" if fusion_weighted else "cross-round-unweighted",
            scores=scores,
            column_ids=tuple(ids),
            num_clients=k,
            probs=None,
            traced=scores[:, :k].argmax(1),
            targets=self.targets,
            predicted_labels=self._predicted,
            seconds=self.seconds,
            engine_calls=self.engine_calls,
        )

    def _add(self, cid: str, raw: Tensor, fused: Tensor, order: list[str]) -> None:
        if cid not in self._weighted:
            order.append(cid)
            self._weighted[cid] = torch.zeros_like(raw)
            self._unweighted[cid] = torch.zeros_like(raw)
        self._unweighted[cid] += raw
        self._weighted[cid] += fused
