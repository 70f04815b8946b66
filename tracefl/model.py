"""Model zoo: one function builds a model from (name, dataset spec).

Image models are torchvision architectures (random init by default) whose stem
is adapted to the dataset's channels and whose head has ``num_classes`` outputs;
text models come from :mod:`tracefl.text`. Every model returns logits
(batch, num_classes) for a tensor input, or for ``model(**inputs)`` on text.
"""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from tracefl.registry import DatasetSpec


class LeNet(nn.Module):
    """Small LeNet-style CNN: two conv+pool blocks and three linear layers."""

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        side = ((image_size // 2) - 4) // 2
        if side < 1:
            raise ValueError(
                f"Model 'cnn' needs images of at least 12x12 pixels, got {image_size}."
            )
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) for images (B, C, H, W)."""
        return self.classifier(self.features(x))


def _adapt_conv(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """Same stem convolution with ``channels`` input channels."""
    return nn.Conv2d(
        channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )


def build_image_model(
    name: str, spec: DatasetSpec, pretrained: bool = False
) -> nn.Module:
    """Build an image classifier for the dataset's channels and classes.

    torchvision ResNets keep their ImageNet stem (stride-2 conv and max pooling),
    which keeps small 28-32 px inputs cheap on a CPU; only the stem's input
    channels and the classification head are changed. DenseNet drops the stem's
    max pooling for images under 64 px so its feature maps do not vanish.
    """
    if name == "cnn":
        return LeNet(spec.channels, spec.image_size, spec.num_classes)
    import torchvision  # only the torchvision models need it (seconds to import)

    factory = {
        "resnet18": torchvision.models.resnet18,
        "resnet34": torchvision.models.resnet34,
        "resnet50": torchvision.models.resnet50,
        "densenet121": torchvision.models.densenet121,
    }[name]
    if pretrained:
        model = factory(weights="DEFAULT")
    else:
        model = factory(weights=None, num_classes=spec.num_classes)
    if name.startswith("resnet"):
        if spec.channels != 3:
            model.conv1 = _adapt_conv(model.conv1, spec.channels)
        if model.fc.out_features != spec.num_classes:
            model.fc = nn.Linear(model.fc.in_features, spec.num_classes)
    else:
        if spec.channels != 3:
            model.features.conv0 = _adapt_conv(model.features.conv0, spec.channels)
        if spec.image_size < 64:
            # Four dense-block transitions halve 28 px down to zero after the
            # stride-4 ImageNet stem; keep the stride-2 conv, drop the pooling.
            model.features.pool0 = nn.Identity()
        if model.classifier.out_features != spec.num_classes:
            model.classifier = nn.Linear(model.classifier.in_features, spec.num_classes)
    return model


def build_model(
    name: str,
    spec: DatasetSpec,
    *,
    pretrained: bool = False,
    max_seq_len: int = 128,
) -> nn.Module:
    """Build the model ``name`` for dataset ``spec`` (one entry point for all).

    ``pretrained`` loads published weights (the run config only allows it for
    models that have them); otherwise the architecture is randomly initialised.
    """
    if spec.kind == "text":
        from tracefl.text import build_text_model

        return build_text_model(
            name, spec.num_classes, max_seq_len=max_seq_len, pretrained=pretrained
        )
    if pretrained:
        ensure_pretrained_weights(name)
    return build_image_model(name, spec, pretrained)


#: The torchvision weights enum of each image model with pretrained weights.
_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "densenet121": "DenseNet121_Weights",
}
WEIGHTS_HOST = "download.pytorch.org"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable; says what to do."""


def pretrained_weights_path(name: str) -> Path:
    """Where torchvision caches the ImageNet weights of ``name``."""
    import torchvision

    weights = getattr(torchvision.models, _TORCHVISION_WEIGHTS[name]).DEFAULT
    filename = Path(urllib.parse.urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def ensure_pretrained_weights(name: str, timeout: float = 3.0) -> None:
    """Fail at once, and clearly, when ``name``'s weights cannot be had.

    torchvision downloads ImageNet weights from ``download.pytorch.org`` into
    its hub cache on first use; offline, without the cached file, that download
    would hang and fail deep inside training.
    """
    if name not in _TORCHVISION_WEIGHTS:
        raise WeightsUnavailableError(f"Model '{name}' has no pretrained weights.")
    path = pretrained_weights_path(name)
    if path.is_file():
        return
    try:
        with socket.create_connection((WEIGHTS_HOST, 443), timeout=timeout):
            return
    except OSError as err:
        raise WeightsUnavailableError(
            f"pretrained=true needs the ImageNet weights of '{name}': {path} is not "
            f"cached and {WEIGHTS_HOST} is unreachable ({err}). Copy the file "
            "there (or set TORCH_HOME), or set pretrained=false."
        ) from err
