"""The parameter sets the methods attribute against, read off a FusedRound.

Every method scores a client by the engine's linear functional
``T(P) = sum_l beta_l <df/dW_l, P_l>`` of a parameter set ``P`` of the model's
shapes: a whole client model (``paper``), a fused update ``A_k * Delta_k``
(``update``, cross-round), or a pseudo-client: the ``server`` (the residual ``r``
of ``theta_t = sum_k A_k theta_k + r`` without its DP noise) and the ``noise``.
This module builds those sets and checks what the caller hands in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


def pseudo_client_sets(rnd: FusedRound, *, updates: bool) -> dict[str, StateDict]:
    """The ``server`` set and, with DP, the ``noise`` set of a round.

    Parameters
    ----------
    rnd
        The round.
    updates
        ``False``: split the residual ``r`` (parameter space, next to whole
        client models); ``True``: split the residual update
        ``theta_t - theta_{t-1} - sum_k A_k Delta_k`` (next to fused updates).

    Returns
    -------
    dict
        ``{"server": ...}`` or ``{"server": ..., "noise": ...}`` (float64, full
        shapes); ``server`` excludes the noise.
    """
    residual = rnd.residual_update() if updates else rnd.residual
    if rnd.noise is None:
        return {SERVER_ID: {k: v.double() for k, v in residual.items()}}
    noise = {k: rnd.noise[k].double() for k in rnd.previous}
    server = {k: residual[k].double() - noise[k] for k in rnd.previous}
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
