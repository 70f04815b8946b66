"""``loo``: exact leave-one-out of the round's aggregation (a counterfactual).

For each input and client ``k``, with ``f`` the objective (default ``log
p(target)``, target = the prediction of ``theta_t``)::

    s_k = f(theta_t) - f(theta_t^{-k})

where ``theta_t^{-k}`` is the round's aggregate recomputed without client ``k``
from the round's decomposition ``theta_t = sum_j A_j theta_j + r``::

    theta_t^{-k} = sum_{j != k} A~_j theta_j + r
    A~_j = A_j + A_k * A_j / sum_{i != k} A_i

i.e. client ``k``'s share of every coordinate is handed to the others in
proportion to their own shares there. For FedAvg (``A_j = n_j / n``) this is
exactly ``sum_{j != k} n_j theta_j / sum_{j != k} n_j`` (computed from the
``n_j`` directly). Where no other client holds any share of a coordinate (a
robust aggregator's one-hot mask that picked ``k``) the share goes to the others
in proportion to their ``n_j``. The residual ``r`` (server state, DP noise) is
kept: it is not client ``k``'s. With a single client, ``theta_t^{-k} =
theta_{t-1}`` (the round without its only client).

This is a check on the gradient methods, not an approximation: no linearity is
assumed. Cost: ``K + 1`` forward passes over the inputs (batched over inputs in
chunks, one pass per counterfactual model, no backward), plus building ``K``
counterfactual states. Shapes: ``scores`` ``(B, K)``, no pseudo-clients, no
``probs``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from tracefl.provenance.objective import OBJECTIVES, objective_values
from tracefl.provenance.validation import (
    Inputs,
    batch_size_of,
    check_target,
    resolve_targets,
)

from .errors import AttributionError
from .fused_round import FusedRound, StateDict
from .result import AttributionResult
from .round_method import RoundMethod, Target
from .terms import is_data_share

#: Relative share below which "no other client holds this coordinate".
EMPTY_SHARE = 1e-12


def leave_one_out_state(rnd: FusedRound, k: int) -> StateDict:
    """``theta_t^{-k}`` (float64, floating entries), see the module docstring."""
    if not 0 <= k < rnd.num_clients:
        raise IndexError(f"client index {k} out of range for {rnd.num_clients}")
    if rnd.num_clients == 1:
        return {key: v.double() for key, v in rnd.previous.items()}
    others = [j for j in range(rnd.num_clients) if j != k]
    n_rest = float(sum(rnd.num_examples[j] for j in others))
    fedavg = is_data_share(rnd)
    out: StateDict = {}
    for key, residual in rnd.residual.items():
        value = residual.double().clone()
        if fedavg:
            for j in others:
                value += rnd.num_examples[j] / n_rest * rnd.clients[j][key].double()
            out[key] = value
            continue
        shares = [rnd.shares[j][key].double() for j in range(rnd.num_clients)]
        rest = sum(shares[j] for j in others)
        total = rest + shares[k]
        empty = rest.abs() <= EMPTY_SHARE * total.abs().clamp_min(1e-300)
        safe_rest = torch.where(empty, torch.ones_like(rest), rest)
        for j in others:
            by_share = shares[j] / safe_rest
            by_size = torch.full_like(rest, rnd.num_examples[j] / n_rest)
            weight = shares[j] + shares[k] * torch.where(empty, by_size, by_share)
            value += weight * rnd.clients[j][key].double()
        out[key] = value
    return out


class LeaveOneOut(RoundMethod):
    """Exact leave-one-out of the aggregation: ``f(theta_t) - f(theta_t^{-k})``.

    Parameters
    ----------
    objective
        ``"log_softmax"`` (default), ``"logit"`` or ``"margin"``.
    device
        Where to run the forward passes (default: the model's device; a private
        copy is moved there if it differs).
    chunk_size
        Inputs per forward pass.

    """

    name = "loo"

    def __init__(
        self,
        *,
        objective: str = "log_softmax",
        device: str | None = None,
        chunk_size: int = 64,
    ) -> None:
        if objective not in OBJECTIVES:
            raise AttributionError(
                f"objective={objective!r} is not one of {list(OBJECTIVES)}"
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise AttributionError(f"chunk_size must be an int, got {chunk_size!r}")
        if chunk_size < 1:
            raise AttributionError(f"chunk_size must be >= 1, got {chunk_size}")
        self.objective = objective
        self.device = None if device is None else torch.device(device)
        self.chunk_size = chunk_size

    def _attribute(
        self, rnd: FusedRound, model: nn.Module, inputs: Inputs, target: Target
    ) -> AttributionResult:
        batch = batch_size_of(inputs)
        checked = check_target(target, batch)
        own_device = next(model.parameters()).device
        device = self.device or own_device
        work = model if device == own_device else copy.deepcopy(model).to(device)
        dtypes = {k: v.dtype for k, v in work.state_dict().items()}
        was_training = work.training
        try:
            work.eval()
            with torch.no_grad():
                logits = self._logits(work, None, inputs, batch, device).double()
                preds = logits.argmax(1)
                targets = resolve_targets(checked, logits, 0)
                full = objective_values(logits, targets, self.objective)
                columns = []
                for k in range(rnd.num_clients):
                    state = {
                        key: v.to(device, dtypes[key])
                        for key, v in leave_one_out_state(rnd, k).items()
                    }
                    without = self._logits(work, state, inputs, batch, device)
                    after = objective_values(without.double(), targets, self.objective)
                    columns.append(full - after)
        finally:
            work.train(was_training)
        scores = torch.stack(columns, dim=1)
        return AttributionResult(
            method=self.name,
            scores=scores,
            column_ids=rnd.client_ids,
            num_clients=rnd.num_clients,
            probs=None,
            traced=scores.argmax(1),
            targets=targets,
            predicted_labels=preds,
            seconds=0.0,
            engine_calls=0,
            forward_passes=rnd.num_clients + 1,
        )

    def _logits(
        self,
        model: nn.Module,
        state: Mapping[str, Tensor] | None,
        inputs: Inputs,
        batch: int,
        device: torch.device,
    ) -> Tensor:
        """``(B, C)`` logits of ``model`` (with ``state`` swapped in, if given)."""
        parts = []
        for start in range(0, batch, self.chunk_size):
            if isinstance(inputs, Tensor):
                args, kwargs = (inputs[start : start + self.chunk_size].to(device),), {}
            else:
                args = ()
                kwargs = {
                    k: v[start : start + self.chunk_size].to(device)
                    for k, v in inputs.items()
                }
            if state is None:
                out = model(*args, **kwargs)
            else:
                out = functional_call(model, state, args, kwargs)
            parts.append(_logits(out))
        return torch.cat(parts)


def _logits(output: object) -> Tensor:
    """``(B, C)`` logits from a tensor, an object with ``.logits`` or a mapping."""
    attribute = getattr(output, "logits", None)
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(attribute, Tensor):
        logits = attribute
    elif isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        logits = output["logits"]
    else:
        raise AttributionError(
            f"model output of type {type(output).__name__} has no logits tensor"
        )
    if logits.dim() != 2:
        raise AttributionError(
            f"model logits must have shape (B, C), got {tuple(logits.shape)}"
        )
    return logits
