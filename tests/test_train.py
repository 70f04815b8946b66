"""Local training: a partition of ``1 mod batch-size`` samples with BatchNorm."""

from __future__ import annotations

import torch

from tracefl.dataset import LabeledTensors
from tracefl.model import build_model
from tracefl.registry import dataset_spec
from tracefl.train import TrainSettings, train

SETTINGS = TrainSettings(
    epochs=1, batch_size=8, optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0
)


def data(n: int) -> LabeledTensors:
    g = torch.Generator().manual_seed(0)
    return LabeledTensors(
        torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def seen_per_step(model: torch.nn.Module, n: int) -> list[int]:
    sizes: list[int] = []
    train(
        model,
        data(n),
        SETTINGS,
        torch.device("cpu"),
        seed=1,
        on_step=lambda _m, _x, y, _i: sizes.append(len(y)),
    )
    return sizes


def test_batchnorm_model_skips_a_last_batch_of_one_sample() -> None:
    """ResNet-18 raised "Expected more than 1 value per channel" on 17 samples."""
    model = build_model("resnet18", dataset_spec("mnist"))
    assert seen_per_step(model, 17) == [8, 8]
    assert seen_per_step(model, 18) == [8, 8, 2]


def test_model_without_batchnorm_trains_on_every_sample() -> None:
    model = build_model("cnn", dataset_spec("mnist"))
    assert seen_per_step(model, 17) == [8, 8, 1]
