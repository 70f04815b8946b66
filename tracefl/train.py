"""Local training and evaluation loops shared by clients and the server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tracefl.dataset import Features, LabeledTensors


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' was requested but CUDA is not available.")
    return torch.device(name)


def to_device(features: Features, device: torch.device) -> Features:
    """Move a tensor or a dict of tensors to ``device``."""
    if isinstance(features, Mapping):
        return {k: v.to(device) for k, v in features.items()}
    return features.to(device)


def logits_of(model: nn.Module, features: Features) -> Tensor:
    """Logits (B, C) for a tensor input or a dict of transformer inputs."""
    out = model(**features) if isinstance(features, Mapping) else model(features)
    return out.logits if hasattr(out, "logits") else out


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings of a client's local training."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    proximal_mu: float = 0.0  # > 0 adds FedProx's proximal term


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW over the model's parameters."""
    params = model.parameters()
    if s.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay
        )
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


#: Training-mode BatchNorm layers (the lazy variants subclass these).
BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

OnStep = Callable[[nn.Module, Features, Tensor, int], None]


def train(
    model: nn.Module,
    data: LabeledTensors,
    settings: TrainSettings,
    device: torch.device,
    seed: int,
    *,
    on_step: OnStep | None = None,
) -> float:
    """Train ``model`` in place on ``data``; return the mean training loss.

    With ``proximal_mu > 0`` the loss gets FedProx's ``mu/2 * ||w - w_global||^2``
    term, anchored at the weights the model had on entry (the global model).

    ``on_step(model, features, labels, i)``, if given, is called before local
    iteration ``i`` (from 0, counted across epochs) with the model at the weights
    ``w_i`` that step starts from and the step's mini-batch (on ``device``):
    Fed-Influence's Eq. 15 needs per-sample gradients at ``w_i``, since step
    ``i``'s Jacobian is ``I - lr * H(w_i)``. It must not change the model.
    """
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
        drop_last=_single_sample_tail(model, len(data), settings.batch_size),
    )
    optimizer = make_optimizer(model, settings)
    criterion = nn.CrossEntropyLoss()
    anchor = (
        [p.detach().clone() for p in model.parameters()]
        if settings.proximal_mu > 0
        else []
    )
    total, count, step = 0.0, 0, 0
    for _ in range(settings.epochs):
        for features, labels in loader:
            features, labels = to_device(features, device), labels.to(device)
            if on_step is not None:
                on_step(model, features, labels, step)
            step += 1
            optimizer.zero_grad()
            loss = criterion(logits_of(model, features), labels)
            if anchor:
                prox = sum(
                    (p - a).pow(2).sum()
                    for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * settings.proximal_mu * prox
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
    return total / max(count, 1)


def _single_sample_tail(model: nn.Module, num_samples: int, batch_size: int) -> bool:
    """Whether to skip a last mini-batch of one sample.

    BatchNorm in training mode cannot normalise a single value per channel
    (ResNet's last block sees ``(1, 512, 1, 1)``) and raises; a client whose
    partition size is ``1 mod batch-size`` would fail every round. Only then,
    and only for models with BatchNorm, that one sample is left out of the
    epoch (a different one each epoch, as the order is shuffled).
    """
    has_batch_norm = any(isinstance(m, BATCH_NORM_TYPES) for m in model.modules())
    return has_batch_norm and num_samples > 1 and num_samples % batch_size == 1


@torch.no_grad()
def predict(
    model: nn.Module, data: LabeledTensors, batch_size: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropy losses (N,) and predicted labels (N,) on CPU."""
    model.to(device).eval()
    losses, preds = [], []
    for start in range(0, len(data), batch_size):
        index = slice(start, start + batch_size)
        features = to_device(data.select_features(index), device)
        labels = data.labels[index].to(device)
        logits = logits_of(model, features)
        losses.append(nn.functional.cross_entropy(logits, labels, reduction="none"))
        preds.append(logits.argmax(dim=1))
    return torch.cat(losses).cpu(), torch.cat(preds).cpu()


def evaluate(
    model: nn.Module, data: LabeledTensors, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data``."""
    losses, preds = predict(model, data, batch_size, device)
    accuracy = (preds == data.labels).float().mean().item()
    return losses.mean().item(), accuracy
