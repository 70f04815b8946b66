"""The parameter sets the methods attribute against, read off a FusedRound.

Every method scores a client by the engine's linear functional
``T(P) = sum_l beta_l <df/dW_l, P_l>`` of a parameter set ``P`` of the model's
shapes: a whole client model (``paper``), a fused update ``A_k * Delta_k``
(``update``, cross-round), or a pseudo-client: the ``server`` (the residual ``r``
of ``theta_t = sum_k A_k theta_k + r`` without its DP noise) and the ``noise``.
This module builds those sets and checks what the caller hands in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .errors import AttributionError
from .fused_round import FusedRound, StateDict, floating_entries
from .result import NOISE_ID, PSEUDO_CLIENT_IDS, SERVER_ID

#: Relative tolerance for "the shares are FedAvg's data shares".
SHARE_TOLERANCE = 1e-12


def check_client_ids(client_ids: Sequence[str]) -> None:
    """Reject client ids that collide with a pseudo-client's name."""
    for cid in client_ids:
        if cid in PSEUDO_CLIENT_IDS:
            raise AttributionError(
                f"client id {cid!r} is reserved for a pseudo-client "
                f"({list(PSEUDO_CLIENT_IDS)}); rename the client"
            )


def scalar_shares(rnd: FusedRound) -> tuple[float, ...] | None:
    """Per-client scalars ``a_k`` if every ``A_k`` is one number for all keys."""
    out = []
    for share in rnd.shares:
        values = {float(s) for s in share.values() if s.numel() == 1}
        if len(values) != 1 or any(s.numel() != 1 for s in share.values()):
            return None
        out.append(values.pop())
    return tuple(out)


def is_data_share(rnd: FusedRound) -> bool:
    """Whether ``A_k = n_k / sum(n)`` for every client and key (FedAvg)."""
    shares = scalar_shares(rnd)
    if shares is None:
        return False
    return all(
        abs(a - p) <= SHARE_TOLERANCE * max(p, 1e-300)
        for a, p in zip(shares, rnd.data_share, strict=True)
    )


def client_update(rnd: FusedRound, k: int) -> StateDict:
    """``Delta_k = theta_k - theta_{t-1}`` of one client (float64).

    Same numbers as ``rnd.updates()[k]``, one client at a time (bounded memory).
    """
    client = rnd.clients[k]
    return {key: client[key].double() - rnd.previous[key].double() for key in client}


def client_fused_update(rnd: FusedRound, k: int) -> StateDict:
    """``A_k * Delta_k`` of one client (float64, full shapes).

    Same numbers as ``rnd.fused_updates()[k]``, one client at a time.
    """
    delta = client_update(rnd, k)
    share = rnd.shares[k]
    return {
        key: (share[key].double() * delta[key]).expand_as(delta[key]).contiguous()
        for key in rnd.previous
    }


def residual_sets(rnd: FusedRound) -> dict[str, StateDict]:
    """Pseudo-clients in parameter space (next to whole client models).

    ``{"server": r - noise}`` plus ``{"noise": noise}`` with DP (float64).
    """
    return _split_noise(rnd, {k: v.double() for k, v in rnd.residual.items()})


def residual_update_sets(
    rnd: FusedRound, fused_total: Mapping[str, Tensor]
) -> dict[str, StateDict]:
    """Pseudo-clients in update space (next to fused updates).

    Parameters
    ----------
    rnd
        The round.
    fused_total
        ``sum_k A_k * Delta_k`` (float64), which the caller has built anyway.

    Returns
    -------
    dict
        ``{"server": theta_t - theta_{t-1} - sum_k A_k Delta_k - noise}`` plus
        ``{"noise": noise}`` with DP (float64).
    """
    step = {
        key: rnd.aggregate[key].double() - rnd.previous[key].double() - fused_total[key]
        for key in rnd.previous
    }
    return _split_noise(rnd, step)


def sum_states(states: Iterable[Mapping[str, Tensor]]) -> StateDict:
    """Key-wise float64 sum of state dicts (at least one)."""
    total: StateDict = {}
    for state in states:
        for key, value in state.items():
            if key in total:
                total[key] = total[key] + value.double()
            else:
                total[key] = value.double().clone()
    return total


def pseudo_ids(rnd: FusedRound) -> tuple[str, ...]:
    """Names of the round's pseudo-clients, in the order of the sets above."""
    return (SERVER_ID,) if rnd.noise is None else (SERVER_ID, NOISE_ID)


def _split_noise(rnd: FusedRound, residual: StateDict) -> dict[str, StateDict]:
    if rnd.noise is None:
        return {SERVER_ID: residual}
    noise = {k: rnd.noise[k].double() for k in rnd.previous}
    server = {k: residual[k] - noise[k] for k in rnd.previous}
    return {SERVER_ID: server, NOISE_ID: noise}


def check_model_holds(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Raise unless the model's floating state equals ``state`` (up to rounding).

    Catches a caller that hands the methods a model from another round.
    """
    if not isinstance(model, nn.Module):
        raise AttributionError(f"model must be an nn.Module, got {type(model)!r}")
    own = floating_entries(model.state_dict())
    if set(own) != set(state):
        missing = sorted(set(state) - set(own))[:3]
        extra = sorted(set(own) - set(state))[:3]
        raise AttributionError(
            f"the model's floating state does not have the keys of {what}: "
            f"missing {missing}, unexpected {extra}"
        )
    for key, value in state.items():
        mine = own[key]
        if mine.shape != value.shape:
            raise AttributionError(
                f"parameter {key!r} has shape {tuple(mine.shape)} in the model but "
                f"{tuple(value.shape)} in {what}"
            )
        a, b = mine.detach().double().cpu(), value.detach().double().cpu()
        if not torch.allclose(a, b, rtol=1e-6, atol=1e-8):
            raise AttributionError(
                f"the model is not {what}: parameter {key!r} differs by up to "
                f"{float((a - b).abs().max()):.3g}"
            )


def state_nbytes(state: Mapping[str, Tensor]) -> int:
    """Storage size of a state dict's tensors in bytes."""
    return sum(t.numel() * t.element_size() for t in state.values())
