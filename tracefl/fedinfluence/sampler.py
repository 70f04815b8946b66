"""Client side of Fed-Influence: per-sample gradients at every local iteration.

The server's recursion (Eq. 15) approximates the Hessian of local step ``i`` by
the empirical Fisher information of ``N_s`` samples (Section "Low-Cost Hessian
Approximation")::

    H~_{t,i,(j)}^k = 1/N_s * sum_{z in S_{t,i}^k} g(w_{t,i,(j)}^k, z) g(...)^T

so client ``k`` only has to draw ``S_{t,i}^k`` and send the gradients
``g = grad_{w_(j)} L(w_{t,i}^k, z)`` of the tracked blocks (Table 1: the paper
counts this as no extra client compute; here it is one extra forward/backward of
``N_s`` samples per step, measured in :attr:`GradientPayload.seconds`).

Interpretation of the paper: its clients run full-batch gradient descent
(Eq. 2), so ``S_{t,i}^k`` is drawn from the whole local set. TraceFL's clients
take mini-batch steps, whose Jacobian is ``I - eta * H_batch``; we draw
``S_{t,i}^k`` from the step's own mini-batch (without replacement; a batch with
fewer than ``N_s`` samples gives all of them), at the weights ``w_{t,i}^k`` the
step starts from. The loss is the per-sample cross-entropy of training; the
weight-decay and proximal terms have constant Hessians that the server adds
exactly (:mod:`tracefl.fedinfluence.recursion`).

Per-sample gradients use ``torch.func`` (``vmap`` over ``grad`` of a
``functional_call``): nothing is written to the model, its ``.grad`` or its
buffers, and the global RNG is forked, so training is bitwise the same with and
without the sampler. Cost per step: one forward of ``N_s`` samples and a
backward down to the earliest tracked layer; memory ``N_s * p_tracked`` floats in
flight plus the accumulated payload.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from .functional import Features, logits_at, take
from .payload import GradientPayload
from .settings import (
    FedInfluenceConfigError,
    FedInfluenceSettings,
    LocalSGD,
    tracked_parameters,
)


def per_sample_gradients(
    model: nn.Module, names: tuple[str, ...], features: Features, labels: Tensor
) -> dict[str, Tensor]:
    """``grad_w CE(model(x_b), y_b)`` for every sample ``b``, for the ``names``.

    Returns per name a ``(B, *param.shape)`` tensor (the model's dtype and
    device). Untracked parameters and buffers are constants of the function, so
    the backward stops at the earliest tracked layer.
    """
    params = dict(model.named_parameters())
    tracked = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in tracked}
    fixed.update(dict(model.named_buffers()))

    def loss_of(weights: dict[str, Tensor], x: Features, y: Tensor) -> Tensor:
        one = (
            {k: v.unsqueeze(0) for k, v in x.items()}
            if isinstance(x, Mapping)
            else x.unsqueeze(0)
        )
        logits = logits_at(model, {**fixed, **weights}, one)
        return nn.functional.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(loss_of), in_dims=(None, 0, 0), randomness="different")
    return per_sample(tracked, features, labels)


class GradientSampler:
    """Draw ``N_s`` per-sample gradients at every local iteration of one round.

    Use one sampler per client and round as ``train(..., on_step=sampler)``, then
    send :meth:`payload`.

    Parameters
    ----------
    model
        The client's model (only used to resolve and check ``settings.layers``).
    settings
        Fed-Influence settings (layers, ``N_s``, memory budget).
    sgd
        The optimiser settings of this client's training, sent to the server.
    seed
        Seed of the sampler's own generator (which samples of a batch are drawn);
        the global RNG is not consumed.

    """

    def __init__(
        self,
        model: nn.Module,
        settings: FedInfluenceSettings,
        sgd: LocalSGD,
        *,
        seed: int,
    ) -> None:
        self.names = tracked_parameters(model, settings.layers)
        self.settings = settings
        self.sgd = sgd
        params = dict(model.named_parameters())
        self._numel = sum(params[n].numel() for n in self.names)
        self._generator = torch.Generator().manual_seed(seed)
        self._rows: dict[str, list[Tensor]] = {n: [] for n in self.names}
        self._offsets = [0]
        self._seconds = 0.0

    def __call__(
        self, model: nn.Module, features: Features, labels: Tensor, iteration: int
    ) -> None:
        """Sample local iteration ``iteration`` (the ``train(on_step=...)`` hook).

        ``model`` must hold the weights the step starts from, ``features`` and
        ``labels`` (B,) the step's mini-batch. Iterations must come in order from 0.
        """
        start = time.perf_counter()
        expected = len(self._offsets) - 1
        if iteration != expected:
            raise ValueError(
                f"GradientSampler got local iteration {iteration}, expected "
                f"{expected} (use one sampler per client and round)"
            )
        count = min(self.settings.num_samples, len(labels))
        rows = self._offsets[-1] + count
        payload_bytes = 4 * rows * self._numel + 8 * (len(self._offsets) + 6)
        if payload_bytes > self.settings.memory_budget_bytes:
            raise FedInfluenceConfigError(
                f"memory_budget_bytes = {self.settings.memory_budget_bytes} is "
                f"exceeded by the payload ({payload_bytes} bytes) at local iteration "
                f"{iteration}; track fewer layers or lower num_samples"
            )
        index = torch.randperm(len(labels), generator=self._generator)[:count]
        index = index.to(labels.device)
        device = labels.device
        accelerator = device.type != "cpu"
        with torch.random.fork_rng(
            devices=[device] if accelerator else [],
            device_type=device.type if accelerator else None,
        ):
            grads = per_sample_gradients(
                model, self.names, take(features, index), labels[index]
            )
        for name in self.names:
            g = grads[name].detach().reshape(count, -1).to("cpu", torch.float32)
            self._rows[name].append(g)
        self._offsets.append(rows)
        self._seconds += time.perf_counter() - start

    def payload(self) -> GradientPayload:
        """The round's gradient samples (raises if no iteration was sampled)."""
        if len(self._offsets) < 2:
            raise ValueError("GradientSampler.payload: no local iteration was sampled")
        return GradientPayload(
            grads={n: torch.cat(rows) for n, rows in self._rows.items()},
            offsets=torch.tensor(self._offsets, dtype=torch.int64),
            sgd=self.sgd,
            seconds=self._seconds,
        )
