"""Memory, communication and server compute of Fed-Influence, before training.

With ``m`` local iterations per round, ``N_s`` samples per iteration,
``p_tracked`` tracked parameter entries (widest block ``p_max``), ``p`` floating
state entries, ``C`` clients and ``K_t`` participants per round:

* payload per client and round (Table 1, ``m N_s p``):
  ``4 m N_s p_tracked + 8 (m + 6)`` bytes (float32 rows, see
  :mod:`~tracefl.fedinfluence.payload`);
* client peak: the payload plus ``4 N_s p_tracked`` bytes of per-sample
  gradients in flight (activations of the ``N_s``-sample forward not counted);
* server state: ``8 C p`` bytes of float64 estimators plus the last global
  model;
* server peak of a round: twice the state (old and new estimators), ``K_t``
  payloads, ``16 K_t p`` bytes of float64 updates and combinatorial terms and
  ``40 C p_max`` bytes of recursion rows;
* server flops per round (Table 1, ``K^2 m N_s p``): ``4 C K_t m N_s p_tracked``.

Exact when every mini-batch holds at least ``N_s`` samples, an upper bound
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .settings import FedInfluenceConfigError, FedInfluenceSettings, tracked_parameters


@dataclass(frozen=True)
class CostEstimate:
    """Fed-Influence's cost per round (bytes, flops); see the module docstring."""

    tracked_entries: int
    state_entries: int
    iterations: int
    payload_bytes: int
    client_peak_bytes: int
    server_state_bytes: int
    server_peak_bytes: int
    server_flops: int


def local_iterations(num_examples: int, batch_size: int, epochs: int) -> int:
    """``m = epochs * ceil(n_k / batch_size)``: optimiser steps of one round."""
    return epochs * math.ceil(num_examples / batch_size)


def estimate_cost(
    model: nn.Module,
    settings: FedInfluenceSettings,
    *,
    iterations: int,
    num_clients: int,
    participants: int,
) -> CostEstimate:
    """Cost of one round with ``iterations`` local steps per client.

    ``num_clients`` is the federation's size ``C`` (every client eventually has an
    estimator), ``participants`` the clients per round ``K_t``.
    """
    for name, value in (
        ("iterations", iterations),
        ("num_clients", num_clients),
        ("participants", participants),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FedInfluenceConfigError(
                f"{name} must be an integer >= 1, got {value}"
            )
    if participants > num_clients:
        raise FedInfluenceConfigError(
            f"participants = {participants} exceeds num_clients = {num_clients}"
        )
    params = dict(model.named_parameters())
    blocks = [params[n].numel() for n in tracked_parameters(model, settings.layers)]
    floating = [t for t in model.state_dict().values() if t.is_floating_point()]
    entries = sum(t.numel() for t in floating)
    model_bytes = sum(t.numel() * t.element_size() for t in floating)
    tracked = sum(blocks)
    rows = iterations * settings.num_samples
    payload = 4 * rows * tracked + 8 * (iterations + 6)
    state = 8 * num_clients * entries + model_bytes
    return CostEstimate(
        tracked_entries=tracked,
        state_entries=entries,
        iterations=iterations,
        payload_bytes=payload,
        client_peak_bytes=payload + 4 * settings.num_samples * tracked,
        server_state_bytes=state,
        server_peak_bytes=2 * state
        + participants * payload
        + 16 * participants * entries
        + 40 * num_clients * max(blocks),
        server_flops=4 * num_clients * participants * rows * tracked,
    )


def check_settings(
    model: nn.Module,
    settings: FedInfluenceSettings,
    *,
    iterations: int,
    num_clients: int,
    participants: int,
) -> CostEstimate:
    """Validate ``settings`` on ``model`` and check the memory budget.

    Call before training (the server knows the largest partition, the batch
    size and the epochs: :func:`local_iterations`). Raises
    :class:`FedInfluenceConfigError` naming the setting: an unknown layer, or a
    client or server peak above ``settings.memory_budget_bytes``.
    """
    cost = estimate_cost(
        model,
        settings,
        iterations=iterations,
        num_clients=num_clients,
        participants=participants,
    )
    budget = settings.memory_budget_bytes
    for side, peak in (
        ("a client's payload", cost.client_peak_bytes),
        ("the server's state and round", cost.server_peak_bytes),
    ):
        if peak > budget:
            raise FedInfluenceConfigError(
                f"memory_budget_bytes = {budget} is too small for {side}: "
                f"{peak} bytes with layers={settings.layers} "
                f"({cost.tracked_entries} tracked entries), "
                f"num_samples={settings.num_samples}, {iterations} local iterations, "
                f"{num_clients} clients; track fewer layers or lower num_samples"
            )
    return cost
