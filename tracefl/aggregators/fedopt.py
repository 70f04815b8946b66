"""Shared decomposition of Flower's adaptive server optimisers (FedOpt family).

Flower's ``FedOpt`` strategies (Reddi et al., 2021) first average the clients
like FedAvg, ``a = sum_k p_k theta_k``, then take one server optimiser step
from ``x = theta_{t-1}``::

    delta_t = a - x
    m_t     = beta_1 * m_{t-1} + (1 - beta_1) * delta_t      (m_0 = 0)
    v_t     = <FedAdam / FedYogi / FedAdagrad rule>(v_{t-1}, delta_t)
    theta_t = x + eta_t * m_t / (sqrt(v_t) + tau)

``theta_t`` is non-linear in the clients only through ``v_t``. Holding ``v_t``
fixed at its post-update value (the value Flower used), the per-coordinate gain
``G = eta_t / (sqrt(v_t) + tau)`` is a constant and ::

    theta_t = sum_k [G (1 - beta_1) p_k] theta_k
              + (1 - G (1 - beta_1)) x + G beta_1 m_{t-1}

holds exactly: the *linearisation* is the choice to treat ``v_t`` as given
rather than as a function of the clients, not an approximation of
``theta_t``. The clients' influence on ``v_t`` itself is not attributed.

Float rounding: Flower forms ``a`` in the clients' dtype (float32), and ``G``
multiplies that rounding error ``e = fl(a) - a`` (up to ``eta_t / tau``, e.g.
~300x for ``eta = 0.1, tau = 1e-4``) while the model stays large, so the
residual also carries ``G (1 - beta_1) e``, with ``fl(a)`` replayed by Flower's
own ``aggregate_arrayrecords`` on the clients (zero in exact arithmetic; it
keeps the decomposition within ~1e-7 of Flower's aggregate instead of ~1e-5).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import Tensor

from tracefl.aggregators.base import (
    Aggregator,
    Decomposition,
    as_float64,
    data_shares,
    floating_keys,
)


@dataclass(frozen=True)
class ServerOptimizerState:
    """A FedOpt strategy's state before a round's aggregation.

    Attributes
    ----------
    current
        ``x = theta_{t-1}`` as Flower keeps it (``current_arrays``), per key.
    first_moment
        ``m_{t-1}`` per key, or ``None`` before the first round (``m_0 = 0``).
    """

    current: dict[str, np.ndarray]
    first_moment: dict[str, np.ndarray] | None


class FedOptAggregator(Aggregator):
    """Base of FedAdam, FedYogi and FedAdagrad (see the module docstring).

    Shares: ``A_k = G (1 - beta_1) p_k`` per coordinate with
    ``G = eta_t / (sqrt(v_t) + tau)``, ``v_t`` held at its post-update value;
    residual ``r = (1 - G (1 - beta_1)) x + G beta_1 m_{t-1} + G (1 - beta_1) e``
    (``e``: the float rounding of Flower's FedAvg step, see the module).
    """

    @abstractmethod
    def step_size(self, strategy: FedOpt, server_round: int) -> float:
        """``eta_t``: the server learning rate Flower applies in this round."""

    def snapshot(self, strategy: Strategy) -> ServerOptimizerState:
        """Copy ``x`` (set by ``configure_train``) and ``m_{t-1}``."""
        opt = _as_fedopt(strategy, self.name)
        if opt.current_arrays is None:
            raise ValueError(
                f"{self.name}: no current arrays; call configure_train before snapshot"
            )
        current = {k: np.array(v, copy=True) for k, v in opt.current_arrays.items()}
        first_moment = (
            {k: np.array(v, copy=True) for k, v in opt.m_t.items()} if opt.m_t else None
        )
        return ServerOptimizerState(current=current, first_moment=first_moment)

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        opt = _as_fedopt(strategy, self.name)
        if not isinstance(before, ServerOptimizerState):
            raise TypeError(
                f"{self.name} needs its snapshot (ServerOptimizerState), "
                f"got {type(before)}"
            )
        if not opt.v_t:
            raise ValueError(
                f"{self.name}: no second moment v_t; call decompose after "
                "aggregate_train"
            )
        eta_t = float(self.step_size(opt, server_round))
        beta_1 = float(opt.beta_1)
        p = data_shares(num_examples)
        keys = floating_keys(clients[0])
        rounded = _flower_average(clients, num_examples, keys)
        shares: list[dict[str, Tensor]] = [{} for _ in clients]
        residual: dict[str, Tensor] = {}
        for key in keys:
            # The denominator in v_t's dtype, exactly as Flower computes it.
            denominator = as_float64(np.sqrt(opt.v_t[key]) + opt.tau)
            gain = eta_t / denominator
            client_gain = gain * (1.0 - beta_1)
            for k, pk in enumerate(p):
                shares[k][key] = client_gain * pk
            exact = sum(pk * c[key].double() for pk, c in zip(p, clients, strict=True))
            rounding = as_float64(rounded[key]) - exact
            r = (1.0 - client_gain) * as_float64(before.current[key])
            r = r + client_gain * rounding
            if before.first_moment is not None and beta_1 != 0.0:
                r = r + gain * beta_1 * as_float64(before.first_moment[key])
            residual[key] = r
        return tuple(shares), residual


def _flower_average(
    clients: Sequence[Mapping[str, Tensor]],
    num_examples: Sequence[int],
    keys: Sequence[str],
) -> dict[str, np.ndarray]:
    """``fl(sum_k p_k theta_k)`` exactly as Flower's FedAvg computes it."""
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {k: Array(client[k].detach().cpu().numpy()) for k in keys}
                ),
                "metrics": MetricRecord({"num-examples": int(n)}),
            }
        )
        for client, n in zip(clients, num_examples, strict=True)
    ]
    average = aggregate_arrayrecords(records, "num-examples")
    return {k: average[k].numpy() for k in keys}


def _as_fedopt(strategy: Strategy, name: str) -> FedOpt:
    if not isinstance(strategy, FedOpt):
        raise TypeError(f"{name} needs a Flower FedOpt strategy, got {type(strategy)}")
    return strategy
