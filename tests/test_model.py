"""Every image model builds for 1x28x28 and 3x32x32 inputs and returns logits."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tracefl.model import build_model
from tracefl.registry import IMAGE_MODEL_NAMES, dataset_spec

SPECS = {
    "mnist": dataset_spec("mnist"),  # 1x28x28, 10 classes
    "cifar10": dataset_spec("cifar10"),  # 3x32x32, 10 classes
    "organamnist": dataset_spec("organamnist"),  # 1x28x28, 11 classes
}


@pytest.mark.parametrize("name", IMAGE_MODEL_NAMES)
@pytest.mark.parametrize("dataset", list(SPECS))
def test_image_model_returns_logits(name: str, dataset: str) -> None:
    spec = SPECS[dataset]
    torch.manual_seed(0)
    model = build_model(name, spec).eval()
    x = torch.randn(2, spec.channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, spec.num_classes)
    assert torch.isfinite(out).all()


def test_model_init_is_seeded() -> None:
    spec = SPECS["mnist"]
    torch.manual_seed(3)
    a = build_model("cnn", spec).state_dict()
    torch.manual_seed(3)
    b = build_model("cnn", spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_rejects_too_small_images() -> None:
    spec = dataclasses.replace(SPECS["mnist"], image_size=8)
    with pytest.raises(ValueError, match="12x12"):
        build_model("cnn", spec)
