"""What Fed-Influence tracks and how the clients train (shared by client and server).

*Blocks.* The paper's layer-wise operation (Section "Layer-Wise Examination and
Truncation") splits the parameter vector ``w`` into blocks ``w_(j)``, one per
parameter tensor (a convolution's weight and its bias are two blocks), and keeps
only the diagonal Hessian blocks ``H_(j)``. Here the user chooses *modules* by
name (``model.named_modules()``; ``""`` is the whole model) and every parameter
tensor under a chosen module becomes one tracked block, in
``model.named_parameters()`` order. Floating state entries outside the chosen
modules are *untracked*: their influence is the paper's layer-wise truncated
estimator (Eq. 13) in every round, which needs no client data (see
:mod:`tracefl.fedinfluence.estimator`).

*Local optimiser.* The paper's clients run plain gradient descent (Eq. 2), so
each local step has the Jacobian ``I - eta * H`` (Eq. 9). TraceFL's clients run
PyTorch SGD, optionally with heavy-ball momentum ``mu``, L2 weight decay
``lambda`` and FedProx's proximal term ``rho/2 * ||w - w_{t-1}||^2``;
:class:`LocalSGD` records these so that the server can linearise the step that
was actually taken (:mod:`tracefl.fedinfluence.recursion`). Adam-type optimisers
are not linearisable this way and are not supported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


class FedInfluenceConfigError(ValueError):
    """Raised for a Fed-Influence setting that cannot work; names the setting."""


@dataclass(frozen=True)
class LocalSGD:
    """The client optimiser as the server's recursion needs it.

    Attributes
    ----------
    lr
        Learning rate ``eta`` (> 0).
    momentum
        PyTorch SGD momentum ``mu`` in ``[0, 1)`` (dampening 0, no Nesterov:
        ``v <- mu * v + g``, ``w <- w - eta * v``, ``v`` starting at 0 each round).
    weight_decay
        PyTorch SGD's L2 term ``lambda >= 0`` (adds ``lambda * I`` to the Hessian).
    proximal_mu
        FedProx's ``rho >= 0`` (adds ``rho * I`` to the Hessian and makes the step
        depend on the round's starting model, the proximal anchor).

    """

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        for name, low, high in (
            ("lr", 0.0, math.inf),
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, math.inf),
            ("proximal_mu", 0.0, math.inf),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FedInfluenceConfigError(f"LocalSGD.{name} must be a number")
            ok = low < value < high if name == "lr" else low <= value < high
            if not (math.isfinite(value) and ok):
                interval = "(0, inf)" if name == "lr" else f"[{low}, {high})"
                raise FedInfluenceConfigError(
                    f"LocalSGD.{name} must lie in {interval}, got {value}"
                )


@dataclass(frozen=True)
class FedInfluenceSettings:
    """Fed-Influence settings, the same on the clients and the server.

    Attributes
    ----------
    layers
        Names of the modules whose parameters are tracked by the recursion
        (``model.named_modules()`` names). See :func:`default_layers`.
    num_samples
        ``N_s``: per-sample gradients drawn at each local iteration (the paper
        uses 50). Drawn without replacement from the step's mini-batch, so a
        batch smaller than ``N_s`` contributes all its samples.
    lwet
        Layer-wise examination and truncation (Eq. 13 and its examination rule).
        Off gives the paper's basic estimator (Eq. 10) on the tracked blocks.
    memory_budget_bytes
        Largest memory Fed-Influence may hold on one side (a client's payload
        buffer, or the server's state plus one round of payloads), checked
        before training by :func:`~tracefl.fedinfluence.cost.check_settings`
        and enforced again while a client samples.

    """

    layers: tuple[str, ...]
    num_samples: int = 16
    lwet: bool = True
    memory_budget_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if isinstance(self.layers, str) or not isinstance(self.layers, Sequence):
            raise FedInfluenceConfigError(
                f"layers must be a tuple of module names, got {self.layers!r}"
            )
        if not self.layers:
            raise FedInfluenceConfigError("layers must name at least one module")
        if any(not isinstance(name, str) for name in self.layers):
            raise FedInfluenceConfigError(f"layers must be strings, got {self.layers}")
        if len(set(self.layers)) != len(self.layers):
            raise FedInfluenceConfigError(f"layers lists a module twice: {self.layers}")
        object.__setattr__(self, "layers", tuple(self.layers))
        for name in ("num_samples", "memory_budget_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FedInfluenceConfigError(
                    f"{name} must be an integer >= 1, got {value!r}"
                )
        if not isinstance(self.lwet, bool):
            raise FedInfluenceConfigError(f"lwet must be a bool, got {self.lwet!r}")


def default_layers(model: nn.Module) -> tuple[str, ...]:
    """The model's last ``nn.Linear``, i.e. its output layer.

    ``("classifier.5",)`` on TraceFL's LeNet: 850 parameters on MNIST, which
    keeps the payload small.
    """
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise FedInfluenceConfigError(
            "layers: the model has no nn.Linear; name the modules to track"
        )
    return (linear[-1],)


def tracked_parameters(model: nn.Module, layers: Sequence[str]) -> tuple[str, ...]:
    """Names of the parameter tensors (blocks ``j``) under the chosen modules.

    Returned in ``model.named_parameters()`` order. Raises
    :class:`FedInfluenceConfigError` for an unknown module, a module without
    parameters, a parameter chosen twice (nested modules), a frozen parameter, or
    a batch-statistics layer (BatchNorm) anywhere in the model, whose per-sample
    gradient is not defined.
    """
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise FedInfluenceConfigError(
                f"layers: module {name!r} is a {type(module).__name__}; per-sample "
                "gradients (Fed-Influence's Fisher approximation) are not defined "
                "for batch-statistics layers"
            )
    chosen: dict[str, str] = {}
    for layer in layers:
        if layer not in modules:
            known = [
                n
                for n, m in modules.items()
                if next(m.parameters(recurse=False), None) is not None
            ]
            raise FedInfluenceConfigError(
                f"layers: no module {layer!r} in {type(model).__name__}; modules "
                f"with parameters: {known}"
            )
        names = [
            f"{layer}.{p}" if layer else p for p, _ in modules[layer].named_parameters()
        ]
        if not names:
            raise FedInfluenceConfigError(f"layers: module {layer!r} has no parameters")
        for name in names:
            if name in chosen:
                raise FedInfluenceConfigError(
                    f"layers: parameter {name!r} is chosen by both "
                    f"{chosen[name]!r} and {layer!r}"
                )
            chosen[name] = layer
    params = dict(model.named_parameters())
    for name in chosen:
        if not params[name].requires_grad:
            raise FedInfluenceConfigError(
                f"layers: parameter {name!r} is frozen (requires_grad=False)"
            )
    return tuple(n for n in params if n in chosen)
