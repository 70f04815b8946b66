"""Server side of Fed-Influence: the influence of removing a client on the model.

Notation (the paper's): round ``t`` has participants ``C_t`` with aggregation
weights ``p_k`` (FedAvg: ``n_k / N(C_t)``), local models ``w_{t,m}^k`` and global
model ``w_t = sum_k p_k w_{t,m}^k``. Fed-Influence on Parameter (FIP, Eq. 5) of
client ``c`` is ``epsilon_t^{-c,*} = w_t(C -> C - {c}) - w_t``, the change of the
global model if ``c`` had never taken part. Its estimator (Eq. 10-11)::

    epsilon_t^{-c} = M_t^{-c} epsilon_{t-1}^{-c}                 (sequential)
                     + w_t(C_t -> C_t - {c}) - w_t                (combinatorial)
    M_t^{-c} = sum_{k in C_t - {c}} p_k^{-c} prod_{i=0}^{m-1} (I - eta H_{t,i}^k)
    p_k^{-c} = p_k / (1 - p_c) if c in C_t else p_k,   epsilon_0^{-c} = 0

kept for *every* client seen so far and updated every round, also when ``c`` is
not in ``C_t`` (then the combinatorial term is 0 but ``M_t^{-c}`` still moves
``epsilon^{-c}``). A client that never took part has ``epsilon^{-c} = 0``
exactly, so clients are added on first participation.

Mapping onto :class:`~tracefl.attribution.FusedRound` (``theta_t = sum_k A_k
theta_k + r``): ``A_k`` must be one scalar per client, the same for every entry,
with ``sum_k A_k = 1`` (FedAvg, FedProx, DP-FedAvg: ``A_k = p_k``; the paper
considers FedAvg only). Then, with ``Delta_k = theta_k - theta_{t-1}``, the
combinatorial term is ``A_c / (1 - A_c) * (sum_k A_k Delta_k - Delta_c)``: the
residual ``r`` (DP noise) is kept in the counterfactual round. Per-coordinate
shares (robust aggregators) and server optimisers (FedAdam-type, whose residual
depends on the clients) are rejected: removing a client changes them in a way
Eq. 10 does not model. DP clipping is not linearised either (the round's
Jacobian ignores the clip).

Per block ``j`` (one parameter tensor; Section "Layer-Wise Examination and
Truncation"):

* tracked blocks use ``M_t,(j)^{-c}`` with the Fisher approximation, evaluated by
  the recursion of Eq. 15 (:func:`~tracefl.fedinfluence.recursion.propagate`)
  on the clients' :class:`~tracefl.fedinfluence.payload.GradientPayload`;
* LWET (``settings.lwet``): if ``||M_t,(j)^{-c} epsilon_{t-1,(j)}^{-c}|| >
  ||epsilon_{t-1,(j)}^{-c}||`` at round ``r``, block ``j`` of client ``c`` uses
  the truncated estimator (Eq. 13, combinatorial term only) in round ``r`` and
  every later round;
* untracked blocks always use the truncated estimator (Eq. 13).

Interpretations of the paper: (1) the examination is kept per pair ``(c, j)``
(the quantity compared carries ``-c``), not per block for all clients; the
paper's finer per-``(c, k)`` variant lives in its supplement and is not built.
(2) If ``c`` is the only participant of round ``t``, removing it leaves the round
without an update, ``w_t(C_t -> {}) = w_{t-1}``: ``M_t^{-c} = I`` and the
combinatorial term is ``w_{t-1} - w_t``. (3) Local steps are mini-batch SGD steps
(see :mod:`~tracefl.fedinfluence.sampler`, :mod:`~tracefl.fedinfluence.recursion`).

Without LWET the basic estimator can overflow in the paper's Case 3 (non-convex
loss or a large learning rate); a non-finite estimate raises
:class:`FedInfluenceDivergedError` instead of being returned.

Cost per round: server ``O(C_seen * |C_t| * m * N_s * p_tracked)`` flops and
``O(C_seen * p)`` float64 state (``p`` = all floating state entries); see
:mod:`~tracefl.fedinfluence.cost`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tracefl.attribution import FusedRound, StateDict

from .effects import PredictionEffect, counterfactual_effects
from .functional import Features
from .payload import GradientPayload, PayloadError
from .recursion import propagate
from .settings import FedInfluenceSettings, tracked_parameters

SHARE_TOLERANCE = 1e-6


class FedInfluenceDivergedError(ArithmeticError):
    """The basic estimator (LWET off) overflowed; names client, block and round."""


@dataclass(frozen=True)
class RoundReport:
    """What one :meth:`FedInfluence.update` cost and decided.

    Attributes
    ----------
    server_round
        The round.
    server_seconds
        Wall-clock seconds of the update on the server.
    client_seconds
        Per participant, the seconds its sampler spent (from the payload).
    payload_bytes
        Per participant, the bytes of its payload.
    state_bytes
        Bytes the estimator keeps across rounds after this update.
    peak_bytes
        Estimate of the update's peak memory: the state twice (the update is
        computed aside, then committed), this round's payloads and the float64
        work buffers (updates, combinatorial terms, recursion rows).
    truncated
        Per client, the blocks LWET truncated in this round (permanent).

    """

    server_round: int
    server_seconds: float
    client_seconds: dict[str, float]
    payload_bytes: dict[str, int]
    state_bytes: int
    peak_bytes: int
    truncated: dict[str, tuple[str, ...]]

    def summary(self) -> dict[str, float | int]:
        """Flat totals for a round record."""
        return {
            "server_seconds": self.server_seconds,
            "client_seconds_total": sum(self.client_seconds.values()),
            "client_seconds_max": max(self.client_seconds.values(), default=0.0),
            "payload_bytes_total": sum(self.payload_bytes.values()),
            "payload_bytes_max": max(self.payload_bytes.values(), default=0),
            "state_bytes": self.state_bytes,
            "peak_bytes": self.peak_bytes,
            "truncated_blocks": sum(len(v) for v in self.truncated.values()),
        }


def _nbytes(state: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def scalar_shares(fused: FusedRound) -> tuple[float, ...]:
    """``A_k`` of a FedAvg-form round, or :class:`ValueError` naming the client."""
    shares = []
    for cid, share in zip(fused.client_ids, fused.shares, strict=True):
        values = set()
        for key, a in share.items():
            if a.numel() != 1:
                raise ValueError(
                    f"Fed-Influence needs one scalar aggregation weight per client; "
                    f"aggregator {fused.aggregator!r} gives client {cid!r} a share of "
                    f"shape {tuple(a.shape)} for {key!r}"
                )
            values.add(float(a))
        if len(values) != 1:
            raise ValueError(
                f"Fed-Influence needs the same weight for every entry; aggregator "
                f"{fused.aggregator!r} gives client {cid!r} weights {sorted(values)}"
            )
        shares.append(values.pop())
    if abs(sum(shares) - 1.0) > SHARE_TOLERANCE or min(shares) <= 0:
        raise ValueError(
            f"Fed-Influence needs positive aggregation weights summing to 1 "
            f"(FedAvg form); aggregator {fused.aggregator!r} gives {shares}"
        )
    return tuple(shares)


def removal_weights(
    rows: list[str], participants: tuple[str, ...], shares: tuple[float, ...]
) -> Tensor:
    """``(R, K)`` float64 weights ``p_k^{-c}`` of ``M_t^{-c}`` (Eq. 11).

    Row ``c``: ``p_k / (1 - p_c)`` for ``k != c`` and 0 for ``k = c`` if ``c``
    took part in the round, else ``p_k``.
    """
    p = torch.tensor(shares, dtype=torch.float64)
    weights = p.expand(len(rows), -1).clone()
    for row, c in enumerate(rows):
        if c in participants:
            k = participants.index(c)
            weights[row] /= 1.0 - shares[k]
            weights[row, k] = 0.0
    return weights


class FedInfluence:
    """Fed-Influence on Parameter (FIP) of every client, kept across rounds.

    Parameters
    ----------
    model
        A model of the federation's architecture: resolves ``settings.layers``
        and evaluates FIL (:meth:`influence_on_loss`); never modified.
    settings
        Tracked layers, LWET on/off (``num_samples`` is the clients' business).

    """

    def __init__(self, model: nn.Module, settings: FedInfluenceSettings) -> None:
        self.model = model
        self.settings = settings
        self.tracked = tracked_parameters(model, settings.layers)
        params = dict(model.named_parameters())
        self._shapes = {n: params[n].shape for n in self.tracked}
        self._keys: tuple[str, ...] | None = None
        self._epsilon: dict[str, StateDict] = {}
        self._truncated: dict[str, dict[str, int]] = {}
        self._aggregate: StateDict | None = None
        self._round = 0

    # ------------------------------------------------------------------ views
    @property
    def server_round(self) -> int:
        """The last round seen (0 before the first update)."""
        return self._round

    @property
    def client_ids(self) -> tuple[str, ...]:
        """Clients seen so far, in order of first participation."""
        return tuple(self._epsilon)

    @property
    def state_bytes(self) -> int:
        """Bytes kept across rounds (estimators, last global model)."""
        kept = sum(_nbytes(e) for e in self._epsilon.values())
        return kept + (_nbytes(self._aggregate) if self._aggregate else 0)

    def truncated_blocks(self) -> dict[str, dict[str, int]]:
        """Per client, ``{block: round LWET truncated it}``."""
        return {c: dict(t) for c, t in self._truncated.items()}

    def parameter_influence(self) -> dict[str, StateDict]:
        """FIP ``epsilon_t^{-c}`` per client seen (float64, the round's keys).

        Clients not listed never took part: their estimator is exactly 0.
        """
        return {
            c: {k: v.clone() for k, v in e.items()} for c, e in self._epsilon.items()
        }

    def counterfactual_states(self) -> dict[str, StateDict]:
        """``w_t + epsilon_t^{-c}`` per client: the estimated model without ``c``."""
        if self._aggregate is None:
            raise ValueError("no round has been seen yet")
        return {
            c: {k: self._aggregate[k].double() + e[k] for k in e}
            for c, e in self._epsilon.items()
        }

    def influence_on_loss(
        self, inputs: Features, labels: Tensor, *, chunk_size: int = 256
    ) -> PredictionEffect:
        """FIL per input and on the set, from the current FIP (Eq. 6).

        ``L(w_t + epsilon_t^{-c}, x_b) - L(w_t, x_b)`` for every input ``b`` and
        client ``c`` seen, with ``w_t`` the last round's global model; see
        :class:`~tracefl.fedinfluence.effects.PredictionEffect` for the fields.
        """
        if self._aggregate is None:
            raise ValueError("no round has been seen yet")
        return counterfactual_effects(
            self.model,
            self._aggregate,
            self.counterfactual_states(),
            inputs,
            labels,
            chunk_size=chunk_size,
        )

    # ----------------------------------------------------------------- update
    def update(
        self, fused: FusedRound, payloads: Mapping[str, GradientPayload]
    ) -> RoundReport:
        """Advance every client's estimator by one round (Eq. 10 with LWET).

        Parameters
        ----------
        fused
            The round: ``previous`` = ``w_{t-1}``, ``clients`` = ``w_{t,m}^k``,
            ``shares`` = ``p_k``, ``aggregate`` = ``w_t``. Rounds must come in
            order, each starting from the previous round's aggregate.
        payloads
            Per participant id, its :class:`GradientPayload` of this round.

        """
        shares = self._check(fused, payloads)
        start = time.perf_counter()
        newly = self._advance(fused, shares, payloads)
        seconds = time.perf_counter() - start
        self._keys = tuple(fused.previous)
        self._round = fused.server_round
        self._aggregate = {k: v.detach().clone() for k, v in fused.aggregate.items()}
        payload_bytes = {c: payloads[c].nbytes for c in fused.client_ids}
        return RoundReport(
            server_round=fused.server_round,
            server_seconds=seconds,
            client_seconds={c: payloads[c].seconds for c in fused.client_ids},
            payload_bytes=payload_bytes,
            state_bytes=self.state_bytes,
            peak_bytes=self._peak_bytes(fused, sum(payload_bytes.values())),
            truncated=newly,
        )

    def _check(
        self, fused: FusedRound, payloads: Mapping[str, GradientPayload]
    ) -> tuple[float, ...]:
        if fused.server_round <= self._round:
            raise ValueError(
                f"round {fused.server_round} comes after round {self._round}; "
                "rounds must be given in order"
            )
        keys = tuple(fused.previous)
        if self._keys is None:
            missing = [n for n in self.tracked if n not in fused.previous]
            if missing:
                raise ValueError(
                    f"the round's model lacks tracked parameters {missing}"
                )
            for name in self.tracked:
                if fused.previous[name].shape != self._shapes[name]:
                    raise ValueError(
                        f"tracked parameter {name!r} has shape "
                        f"{tuple(fused.previous[name].shape)} in the round, "
                        f"{tuple(self._shapes[name])} in the model"
                    )
        elif keys != self._keys:
            raise ValueError("the round's state entries differ from earlier rounds'")
        if self._aggregate is not None:
            for key in keys:
                if not torch.allclose(
                    fused.previous[key].double(),
                    self._aggregate[key].double(),
                    rtol=1e-5,
                    atol=1e-6,
                ):
                    raise ValueError(
                        f"round {fused.server_round} starts from a model that is not "
                        f"round {self._round}'s aggregate ({key!r} differs): "
                        "Fed-Influence must see every round"
                    )
        shares = scalar_shares(fused)
        for cid in fused.client_ids:
            if cid not in payloads:
                raise PayloadError(
                    f"no Fed-Influence payload for participant {cid!r} of round "
                    f"{fused.server_round}"
                )
            payloads[cid].check_against(self._shapes, cid)
        return shares

    def _advance(
        self,
        fused: FusedRound,
        shares: tuple[float, ...],
        payloads: Mapping[str, GradientPayload],
    ) -> dict[str, tuple[str, ...]]:
        """Compute round ``t``'s estimators, then commit them (all or nothing)."""
        keys = tuple(fused.previous)
        previous = dict(self._epsilon)
        truncated = {c: dict(t) for c, t in self._truncated.items()}
        for cid in fused.client_ids:
            if cid not in previous:  # epsilon_{t-1}^{-c} = 0 before c took part
                previous[cid] = {
                    k: torch.zeros(fused.previous[k].shape, dtype=torch.float64)
                    for k in keys
                }
                truncated[cid] = {}
        sole = fused.client_ids[0] if len(shares) == 1 else None
        combinatorial = self._combinatorial(fused, shares)
        # Sequential terms; untracked and truncated blocks keep 0 (Eq. 13).
        sequential: dict[str, dict[str, Tensor]] = {c: {} for c in previous}
        if sole is not None:
            # M_t^{-c} = I: without c the round has no update (interpretation 2).
            for key in self.tracked:
                if key not in truncated[sole]:
                    sequential[sole][key] = previous[sole][key]
        newly: dict[str, list[str]] = {}
        for key in self.tracked:
            rows = [
                c
                for c, e in previous.items()
                if c != sole and key not in truncated[c] and bool(e[key].any())
            ]
            if not rows:
                continue
            before = torch.stack([previous[c][key].reshape(-1) for c in rows])
            weights = removal_weights(rows, fused.client_ids, shares)
            after = torch.zeros_like(before)
            for index, cid in enumerate(fused.client_ids):
                p = payloads[cid]
                after += weights[:, index : index + 1] * propagate(
                    before, p.grads[key], p.offsets, p.sgd
                )
            grew = after.norm(dim=1) > before.norm(dim=1)
            for row, c in enumerate(rows):
                if self.settings.lwet and bool(grew[row]):
                    truncated[c][key] = fused.server_round
                    newly.setdefault(c, []).append(key)
                    continue
                if not bool(torch.isfinite(after[row]).all()):
                    raise FedInfluenceDivergedError(
                        f"Fed-Influence of client {c!r} on {key!r} became non-finite "
                        f"in round {fused.server_round} (basic estimator, Case 3 of "
                        "the paper); enable LWET (lwet=True)"
                    )
                sequential[c][key] = after[row].reshape(previous[c][key].shape)
        updated = {}
        for c, e in previous.items():
            comb = combinatorial.get(c)
            updated[c] = {}
            for key in keys:
                seq = sequential[c].get(key)
                if seq is None:
                    seq = torch.zeros_like(e[key])
                updated[c][key] = seq if comb is None else seq + comb[key]
        self._epsilon = updated
        self._truncated = truncated
        return {c: tuple(v) for c, v in newly.items()}

    def _combinatorial(
        self, fused: FusedRound, shares: tuple[float, ...]
    ) -> dict[str, StateDict]:
        """``w_t(C_t -> C_t - {c}) - w_t`` for every participant ``c``."""
        if len(shares) == 1:
            only = fused.client_ids[0]
            return {
                only: {
                    k: fused.previous[k].double() - fused.aggregate[k].double()
                    for k in fused.previous
                }
            }
        updates = fused.updates()
        step = {
            k: sum(a * u[k] for a, u in zip(shares, updates, strict=True))
            for k in fused.previous
        }
        return {
            c: {k: a / (1.0 - a) * (step[k] - u[k]) for k in fused.previous}
            for c, a, u in zip(fused.client_ids, shares, updates, strict=True)
        }

    def _peak_bytes(self, fused: FusedRound, payload_bytes: int) -> int:
        """State twice (old and new estimators), payloads, float64 work buffers."""
        entries = sum(v.numel() for v in fused.previous.values())
        work = 2 * fused.num_clients * entries * 8  # updates + combinatorial terms
        widest = max(self._shapes[n].numel() for n in self.tracked)
        recursion = 5 * len(self._epsilon) * widest * 8
        return 2 * self.state_bytes + payload_bytes + work + recursion
