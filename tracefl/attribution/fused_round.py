"""One round of federated training as provenance sees it (Flower-free).

Every aggregator TraceFL supports writes the global model it produced as ::

    theta_t = sum_k A_k * theta_k + r                                 (1)

with ``theta_k`` client ``k``'s model as fused (after any DP clipping), ``A_k``
client ``k``'s per-coordinate share (a scalar ``p_k = n_k / n`` for FedAvg, a
one-hot or uniform mask for robust aggregators, a linearised server-optimiser
gain for FedAdam-type strategies) and ``r`` the residual: what no client
contributed (server momentum or optimiser state, DP noise, the part of the
previous model an aggregator keeps). A :class:`FusedRound` carries the terms of
(1) together with ``theta_{t-1}``, the global model the clients started from, so
that attribution methods can use whole client models (the paper's Eq. 5), their
updates ``Delta_k = theta_k - theta_{t-1}``, or the fused updates
``A_k * Delta_k`` (cross-round methods), without knowing the aggregator.

Only floating-point state entries take part (integer buffers such as BatchNorm's
``num_batches_tracked`` are not attributable and are left out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

StateDict = dict[str, Tensor]


def floating_entries(state: Mapping[str, Tensor]) -> StateDict:
    """The floating-point entries of a state dict, in its order."""
    return {k: v for k, v in state.items() if v.is_floating_point()}


@dataclass(frozen=True)
class FusedRound:
    """The terms of ``theta_t = sum_k A_k * theta_k + r`` for one round.

    Attributes
    ----------
    server_round
        Round number, from 1.
    aggregator
        The ``fusion`` name that produced the round (e.g. ``"fedavg"``).
    client_ids
        ``K`` unique client names, in the order of every per-client field.
    num_examples
        ``K`` positive training-set sizes ``n_k`` the clients reported.
    previous
        ``theta_{t-1}``: the global model sent to the clients (floating entries).
    clients
        ``K`` client models ``theta_k`` as fused, each with the keys of
        ``previous``.
    aggregate
        ``theta_t``: the global model the round produced (after DP noise).
    shares
        ``K`` dicts ``A_k``: per key a tensor broadcastable to that entry's shape
        (0-d for a per-client scalar).
    residual
        ``r`` per key (full shape), such that (1) holds.
    noise
        The part of ``r`` that is DP noise (full shape per key), or ``None``.

    """

    server_round: int
    aggregator: str
    client_ids: tuple[str, ...]
    num_examples: tuple[int, ...]
    previous: StateDict
    clients: tuple[StateDict, ...]
    aggregate: StateDict
    shares: tuple[StateDict, ...]
    residual: StateDict
    noise: StateDict | None = None

    def __post_init__(self) -> None:
        k = len(self.client_ids)
        if k < 1 or len(set(self.client_ids)) != k:
            raise ValueError(f"client_ids must be {k} >= 1 unique names")
        for name, seq in (
            ("num_examples", self.num_examples),
            ("clients", self.clients),
            ("shares", self.shares),
        ):
            if len(seq) != k:
                raise ValueError(f"{name} has {len(seq)} entries for {k} clients")
        if any(n <= 0 for n in self.num_examples):
            raise ValueError(f"num_examples must be positive, got {self.num_examples}")
        keys = set(self.previous)
        for name, state in (
            ("aggregate", self.aggregate),
            ("residual", self.residual),
            *((f"clients[{i}]", c) for i, c in enumerate(self.clients)),
            *((f"shares[{i}]", s) for i, s in enumerate(self.shares)),
        ):
            if set(state) != keys:
                diff = sorted(set(state) ^ keys)[:3]
                raise ValueError(f"{name} keys differ from previous' (e.g. {diff})")

    # ------------------------------------------------------------ construction
    @classmethod
    def weighted_average(
        cls,
        server_round: int,
        aggregator: str,
        client_ids: Sequence[str],
        num_examples: Sequence[int],
        previous: Mapping[str, Tensor],
        clients: Sequence[Mapping[str, Tensor]],
        aggregate: Mapping[str, Tensor],
        noise: Mapping[str, Tensor] | None = None,
    ) -> FusedRound:
        """FedAvg's decomposition: ``A_k = p_k = n_k / sum(n)``, ``r`` = noise.

        The residual is ``theta_t - sum_k p_k theta_k`` computed from the given
        aggregate, so it holds the DP noise (and float rounding) when there is
        any; ``noise`` labels it as such.
        """
        prev = floating_entries(previous)
        states = tuple({k: c[k] for k in prev} for c in clients)
        total = float(sum(num_examples))
        p = [n / total for n in num_examples]
        shares = tuple(
            {key: torch.tensor(pk, dtype=torch.float64) for key in prev} for pk in p
        )
        agg = {k: aggregate[k] for k in prev}
        residual = {
            key: agg[key].double()
            - sum(pk * s[key].double() for pk, s in zip(p, states, strict=True))
            for key in prev
        }
        return cls(
            server_round=server_round,
            aggregator=aggregator,
            client_ids=tuple(client_ids),
            num_examples=tuple(int(n) for n in num_examples),
            previous=prev,
            clients=states,
            aggregate=agg,
            shares=shares,
            residual=residual,
            noise=None if noise is None else {k: noise[k] for k in prev},
        )

    # ------------------------------------------------------------------ views
    @property
    def num_clients(self) -> int:
        """``K``."""
        return len(self.client_ids)

    @property
    def data_share(self) -> tuple[float, ...]:
        """``p_k = n_k / sum(n)`` (the paper's data share, whatever the aggregator)."""
        total = float(sum(self.num_examples))
        return tuple(n / total for n in self.num_examples)

    def reconstruct(self) -> StateDict:
        """``sum_k A_k * theta_k + r`` in float64 (equals ``aggregate``)."""
        return {
            key: self.residual[key].double()
            + sum(
                s[key].double() * c[key].double()
                for s, c in zip(self.shares, self.clients, strict=True)
            )
            for key in self.previous
        }

    def updates(self) -> tuple[StateDict, ...]:
        """``Delta_k = theta_k - theta_{t-1}`` per client (float64)."""
        return tuple(
            {key: c[key].double() - self.previous[key].double() for key in c}
            for c in self.clients
        )

    def share_weighted(
        self, states: Sequence[Mapping[str, Tensor]]
    ) -> tuple[StateDict, ...]:
        """``A_k * states[k]`` per client (float64, full shapes)."""
        return tuple(
            {
                key: (s[key].double() * state[key].double())
                .expand_as(state[key])
                .contiguous()
                for key in self.previous
            }
            for s, state in zip(self.shares, states, strict=True)
        )

    def fused_updates(self) -> tuple[StateDict, ...]:
        """``A_k * Delta_k``: each client's part of ``theta_t - theta_{t-1}``."""
        return self.share_weighted(self.updates())

    def residual_update(self) -> StateDict:
        """``theta_t - theta_{t-1} - sum_k A_k * Delta_k`` (the ``server`` term)."""
        fused = self.fused_updates()
        return {
            key: self.aggregate[key].double()
            - self.previous[key].double()
            - sum(f[key] for f in fused)
            for key in self.previous
        }
