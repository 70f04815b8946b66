"""Per-coordinate shares of order-statistic aggregators (median, trimmed mean).

Both aggregate, per coordinate, the mean of a window of the sorted client values:
ranks ``[low, high)``. A window keeps *values*, not clients: when clients tie on
a value, which of them "was kept" is not defined, so each value's share is split
equally among all clients holding it. With ``c_k`` the number of window slots
whose value equals ``theta_k`` and ``d_k`` the number of clients whose value
equals ``theta_k`` (``d_k >= 1``), ::

    A_k = c_k / ((high - low) * d_k)

Clients with the same value get the same share, the shares sum to 1 per
coordinate, ``sum_k A_k theta_k`` is the window mean exactly, and the result does
not depend on the order of the replies. Without ties ``A_k`` is ``1 / (high -
low)`` on the kept clients and 0 elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from tracefl.aggregators.base import (
    Decomposition,
    floating_keys,
    stacked,
    zero_residual,
)


def rank_window_shares(values: Tensor, low: int, high: int) -> Tensor:
    """Shares of the mean of sorted ranks ``[low, high)`` along dim 0.

    Parameters
    ----------
    values
        ``(K, *shape)`` client values of one entry (finite).
    low, high
        ``0 <= low < high <= K``: the kept ranks after an ascending sort.

    Returns
    -------
    Tensor
        ``(K, *shape)`` float64 shares ``A_k`` (see the module docstring).
    """
    num = values.shape[0]
    if not 0 <= low < high <= num:
        raise ValueError(f"rank window [{low}, {high}) is not inside 0..{num}")
    # Equality in the clients' own dtype (exact); counts as int32, not float64.
    window = values.sort(dim=0).values[low:high]
    kept = torch.zeros(values.shape, dtype=torch.int32)
    for slot in window:  # c_k: window slots holding theta_k's value
        kept += values == slot
    holders = torch.zeros(values.shape, dtype=torch.int32)
    for other in values:  # d_k: clients holding theta_k's value
        holders += values == other
    return kept.double() / (holders.double() * (high - low))


def window_decomposition(
    clients: Sequence[Mapping[str, Tensor]], low: int, high: int
) -> Decomposition:
    """:func:`rank_window_shares` for every floating key; zero residual."""
    keys = floating_keys(clients[0])
    per_client: list[dict[str, Tensor]] = [{} for _ in clients]
    for key in keys:
        shares = rank_window_shares(stacked(clients, key), low, high)
        for k, share in enumerate(torch.unbind(shares)):
            per_client[k][key] = share
    return tuple(per_client), zero_residual(clients[0], keys)
