"""The linear-cost recursion of Fed-Influence (Eq. 14-15), generalised to SGD.

For client ``k``'s ``m`` local steps of round ``t`` and a tracked block ``j``,
the local sequential influence of Eq. 8 is the product of the steps' Jacobians
applied to ``epsilon_{t-1,(j)}^{-c}``. With the Fisher approximation of the
Hessian this is Eq. 14, ``prod_i (I - eta/N_s sum_z g g^T) epsilon``, which the
paper evaluates without forming a ``p x p`` matrix (Eq. 15)::

    sigma <- epsilon_{t-1}
    for i = 0 .. m-1:
        sigma <- sigma - eta/N_s * sum_{z in S_i} g_z (g_z^T sigma)        (15)

Generalisation (exact linearisation of PyTorch SGD, reduces to Eq. 15 when
``momentum = weight_decay = proximal_mu = 0``): a step computes
``d_i = grad L_batch(w_i) + lambda w_i + rho (w_i - w_{t-1})``,
``v_{i+1} = mu v_i + d_i`` (``v_0 = 0``), ``w_{i+1} = w_i - eta v_{i+1}``. A
perturbation ``epsilon`` of the round's starting model ``w_{t-1}`` (which is
also FedProx's anchor) moves ``w_i`` by ``sigma_i`` and ``v_i`` by ``nu_i``::

    nu    <- mu * nu + (H~_i + lambda + rho) sigma - rho * epsilon
    sigma <- sigma - eta * nu                        (sigma_0 = epsilon, nu_0 = 0)

Shapes: ``epsilon`` is ``(R, p_j)`` (one row per client ``c`` whose estimator is
propagated, all through the same client ``k``), the samples of iteration ``i``
``(S_i, p_j)``. Cost ``4 R S p_j`` flops per iteration, i.e. ``O(m N_s p)`` per
``(c, k)`` pair (Table 1), memory ``3 R p_j`` floats. Computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .settings import LocalSGD


def propagate(epsilon: Tensor, grads: Tensor, offsets: Tensor, sgd: LocalSGD) -> Tensor:
    """``prod_{i=m-1..0} J_i`` applied to every row of ``epsilon``.

    Parameters
    ----------
    epsilon
        ``(R, p)`` perturbations of the round's starting model (one block).
    grads
        ``(S, p)`` per-sample gradient rows of that block, all iterations.
    offsets
        ``(m + 1,)`` int64: rows of iteration ``i`` are ``offsets[i]:offsets[i+1]``.
    sgd
        The client's optimiser.

    Returns
    -------
    Tensor
        ``(R, p)`` float64: the perturbation of the client's final local model.

    """
    start = epsilon.to(torch.float64)
    sigma = start.clone()
    velocity = torch.zeros_like(sigma)
    damping = sgd.weight_decay + sgd.proximal_mu
    bounds = offsets.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        g = grads[lo:hi].to(torch.float64)
        direction = (sigma @ g.T) @ g / (hi - lo)  # H~_i sigma, Eq. 15's inner sum
        if damping:
            direction += damping * sigma
        if sgd.proximal_mu:
            direction -= sgd.proximal_mu * start
        if sgd.momentum:
            velocity = sgd.momentum * velocity + direction
            sigma = sigma - sgd.lr * velocity
        else:
            sigma = sigma - sgd.lr * direction
    return sigma
