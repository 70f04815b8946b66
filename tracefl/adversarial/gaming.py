"""A client gaming score-based attribution: transforms of its trained model.

Every TraceFL method scores client ``k`` through its update ``Delta_k = theta_k
- theta_{t-1}`` (or whole model ``theta_k``) as the aggregator fused it:

* per-round methods (``paper``, ``update``, ``loo``) look at round ``t`` only:
  ``<g_t, A_k theta_k>``, ``<g_t, A_k Delta_k>``, ``f(theta_t) - f(theta_t^{-k})``;
* cross-round methods add those terms over every round:
  ``sum_t <g_t, A_k^t Delta_k^t>`` (``cumulative``: against ``sum_t A_k^t Delta_k^t``);

with ``g_t = d f / d theta`` at ``theta_t`` and ``f`` the log-probability (raw
logit for ``paper``) of the attributed class. A malicious client controls only
what it sends, so each strategy below is a transform ``theta_k -> theta_k'``
applied after honest training, designed from those formulas:

``front-load`` (be blamed for nothing: hide in time)
    Before ``start_round`` send ``theta_{t-1} + s * Delta_k`` (plant the effect
    early, ``s`` = strength >= 1), from ``start_round`` on send ``theta_{t-1} +
    Delta_k / s`` (look inactive). The planted effect lives on in every later
    global model's ``theta_{t-1}``, which per-round scores do not credit to
    anyone (it cancels in ``update`` and ``loo``; in ``paper`` it is split by
    data share), while cross-round sums keep the early, boosted terms.
``sharpen`` (be credited for everything: boost its score on benign inputs)
    From ``start_round`` on add ``s * W_out^{t-1}`` (and the bias) to its update
    of the output layer: the fused model's logits are scaled by about ``1 +
    A_k s``, which changes no prediction's argmax but raises ``log p`` of every
    confidently predicted input (``<d log p_y / d W_out, W_out> = z_y - E_p[z] >
    0`` when ``y`` is the top class) and its raw logit. Every method that scores
    a log-probability or logit change credits it, on every input.

``orthogonal`` (move the model where attribution does not look)
    From ``start_round`` on add a random component ``v`` with ``||v|| = s *
    ||Delta_k||``, projected onto the orthogonal complement of the client's
    estimate of typical test gradients: the per-class mean gradients ``g_c`` of
    ``log p(c | x)`` over its own samples of class ``c`` at ``theta_{t-1}``
    (:func:`class_gradient_directions`; it cannot see the server's test set).
    First-order scores ``<g(x), A_k (Delta_k + v)>`` of inputs whose gradient
    lies in ``span{g_c}`` do not change, while the model moves by ``A_k v``.

Only parameters are transformed (buffers such as BatchNorm statistics are sent
as trained); the result is a new state dict.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .trigger import select_rows

#: The strategies (``gaming-strategy``); ``none`` sends the honest model.
STRATEGIES = ("none", "front-load", "sharpen", "orthogonal")


@dataclass(frozen=True)
class GamingPlan:
    """What a gaming client plays.

    Attributes
    ----------
    strategy
        One of :data:`STRATEGIES`.
    strength
        ``s``: the front-load factor (``>= 1``) or the sharpening scale (``> 0``).
    start_round
        ``front-load``: first round of the hiding phase; ``sharpen``: first round
        it sharpens.

    """

    strategy: str
    strength: float
    start_round: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"unknown gaming strategy {self.strategy!r}; known: {STRATEGIES}"
            )
        if not self.strength > 0 or (
            self.strategy == "front-load" and self.strength < 1
        ):
            raise ValueError(
                f"strength {self.strength} is not allowed for {self.strategy!r} "
                "(front-load: >= 1; sharpen, orthogonal: > 0)"
            )

    def update_factor(self, server_round: int) -> float:
        """The factor on ``Delta_k`` in a round (1 unless ``front-load``)."""
        if self.strategy != "front-load":
            return 1.0
        return self.strength if server_round < self.start_round else 1.0 / self.strength

    def sharpens(self, server_round: int) -> bool:
        """Whether the output layer is sharpened in a round."""
        return self.strategy == "sharpen" and server_round >= self.start_round

    def adds_orthogonal(self, server_round: int) -> bool:
        """Whether an orthogonal component is added in a round."""
        return self.strategy == "orthogonal" and server_round >= self.start_round


def output_layer_keys(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """State-dict keys of the output layer: the last ``nn.Linear`` to the classes.

    Raises
    ------
    ValueError
        No ``nn.Linear`` with ``out_features == num_classes``.

    """
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            last = name
    if last is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear with {num_classes} outputs to "
            "sharpen"
        )
    prefix = f"{last}." if last else ""
    return tuple(
        f"{prefix}{p}" for p, _ in model.get_submodule(last).named_parameters()
    )


def orthogonal_component(
    update: Tensor, directions: Tensor, strength: float, generator: torch.Generator
) -> Tensor:
    """A random ``(P,)`` vector orthogonal to ``directions``, norm ``s * ||update||``.

    Parameters
    ----------
    update
        ``(P,)`` the client's flat update ``Delta_k`` (float64).
    directions
        ``(m, P)`` the directions to stay orthogonal to (rows; any rank).
    strength
        ``s``.
    generator
        Source of the random direction (seeded by the caller).

    """
    v = torch.randn(update.shape, generator=generator, dtype=torch.float64)
    if directions.numel():
        q, r = torch.linalg.qr(directions.double().T)  # (P, m): orthonormal span
        keep = r.diagonal().abs() > 1e-12 * r.diagonal().abs().max().clamp_min(1e-300)
        q = q[:, keep]
        v = v - q @ (q.T @ v)
    norm = v.norm()
    if norm == 0:
        return v
    return v * (strength * update.double().norm() / norm)


def class_gradient_directions(
    model: nn.Module,
    features: Tensor | Mapping[str, Tensor],
    labels: Tensor,
    num_classes: int,
) -> Tensor:
    """``(m, P)`` mean gradient of ``log p(c | x)`` per class ``c`` present.

    Over the samples of each class (``features``: ``(N, ...)`` or a mapping of
    ``(N, L)`` model keyword inputs), at the model's current parameters,
    flattened in ``model.parameters()`` order. Memory: ``m x P`` float64.
    """
    params = [p for p in model.parameters()]
    rows = []
    was_training = model.training
    model.eval()
    try:
        for c in range(num_classes):
            mask = labels == c
            if not bool(mask.any()):
                continue
            batch = select_rows(features, mask)
            out = model(**batch) if isinstance(batch, Mapping) else model(batch)
            logits = getattr(out, "logits", out)
            objective = logits.log_softmax(1)[:, c].mean()
            grads = torch.autograd.grad(objective, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                ).double()
            )
    finally:
        model.train(was_training)
    if not rows:
        return torch.zeros(0, sum(p.numel() for p in params), dtype=torch.float64)
    return torch.stack(rows)


def game_update(
    plan: GamingPlan,
    server_round: int,
    previous: Mapping[str, Tensor],
    trained: Mapping[str, Tensor],
    parameter_keys: Sequence[str],
    output_keys: Collection[str] = (),
    directions: Tensor | None = None,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The model a gaming client sends instead of ``trained``.

    Parameters
    ----------
    plan, server_round
        The strategy and the round being played.
    previous
        ``theta_{t-1}``: the global model the client received (state dict).
    trained
        ``theta_k``: its honestly trained model (same keys).
    parameter_keys
        Keys that are parameters, in ``model.parameters()`` order (only these are
        transformed).
    output_keys
        The output layer's keys (:func:`output_layer_keys`; ``sharpen`` needs them).
    directions
        ``(m, P)`` directions over ``parameter_keys`` (``orthogonal`` needs them:
        :func:`class_gradient_directions`).
    seed
        Seed of ``orthogonal``'s random direction.

    Returns
    -------
    dict
        ``theta_k'`` with the dtypes and shapes of ``trained``.

    """
    if set(previous) != set(trained):
        raise ValueError("previous and trained state dicts have different keys")
    missing = [k for k in (*parameter_keys, *output_keys) if k not in trained]
    if missing:
        raise ValueError(f"keys not in the state dict: {missing[:3]}")
    factor = plan.update_factor(server_round)
    sharpen = plan.sharpens(server_round)
    if sharpen and not output_keys:
        raise ValueError("sharpen needs the output layer's keys")
    extra: dict[str, Tensor] = {}
    if plan.adds_orthogonal(server_round):
        if directions is None:
            raise ValueError("orthogonal needs the class gradient directions")
        extra = _orthogonal_extra(
            plan, previous, trained, parameter_keys, directions, seed
        )
    out: dict[str, Tensor] = {}
    for key, value in trained.items():
        if key not in parameter_keys or not value.is_floating_point():
            out[key] = value.clone()
            continue
        prev = previous[key].to(value.dtype)
        sent = prev + factor * (value - prev) if factor != 1.0 else value.clone()
        if sharpen and key in output_keys:
            sent = sent + plan.strength * prev
        if key in extra:
            sent = sent + extra[key].to(value.dtype)
        out[key] = sent
    return out


def _orthogonal_extra(
    plan: GamingPlan,
    previous: Mapping[str, Tensor],
    trained: Mapping[str, Tensor],
    parameter_keys: Sequence[str],
    directions: Tensor,
    seed: int,
) -> dict[str, Tensor]:
    """``orthogonal``'s component, split back into the parameters' shapes."""
    keys = [k for k in parameter_keys if trained[k].is_floating_point()]
    update = torch.cat(
        [(trained[k].double() - previous[k].double()).reshape(-1) for k in keys]
    )
    if directions.shape != (directions.shape[0], update.numel()):
        raise ValueError(
            f"directions have shape {tuple(directions.shape)}, the update has "
            f"{update.numel()} parameters"
        )
    generator = torch.Generator().manual_seed(seed)
    flat = orthogonal_component(update, directions, plan.strength, generator)
    out, start = {}, 0
    for key in keys:
        n = trained[key].numel()
        out[key] = flat[start : start + n].reshape(trained[key].shape)
        start += n
    return out
