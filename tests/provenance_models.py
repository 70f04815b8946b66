"""Models, client sets and inputs shared by the provenance engine tests.

Everything is float64 so that engine and oracle differ only by summation order.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import Tensor, nn


class LeNet(nn.Module):
    """conv-relu-pool-conv-relu-pool-linear-relu-linear for 1x28x28 inputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.relu = nn.ReLU(inplace=True)  # in-place right after a traced layer
        self.fc2 = nn.Linear(120, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


class OddConvNet(nn.Module):
    """Strides, dilation, groups, depthwise, 'same' padding, no bias, 1x1 maps."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding="same", groups=8)
        self.valid = nn.Conv2d(8, 12, (3, 2), stride=(2, 1), padding="valid")
        self.down = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.tiny = nn.Conv2d(16, 16, 3, stride=2, padding=1)  # 2x2 -> 1x1
        self.point = nn.Conv2d(16, 16, 3, padding=1)  # 1x1 map: centre tap only
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.stem, self.grouped, self.depthwise, self.valid):
            x = torch.relu(conv(x))
        x = torch.relu(self.down(x))
        x = torch.relu(self.tiny(x))
        x = torch.relu(self.point(x))
        return self.head(self.norm(x.mean((2, 3))))


def perturbed_clients(model: nn.Module, k: int, scale: float) -> list[nn.Module]:
    clients = []
    for i in range(k):
        gen = torch.Generator().manual_seed(100 + i)
        client = copy.deepcopy(model)
        with torch.no_grad():
            for p in client.parameters():
                noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                p.add_(scale * (1 + i) * noise)
        clients.append(client)
    return clients


def randomise_bn_stats(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))


def _lenet() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    return LeNet().double(), torch.randn(3, 1, 28, 28, dtype=torch.float64)


def _oddconv() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    return OddConvNet().double(), torch.randn(3, 3, 17, 15, dtype=torch.float64)


def _resnet18() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    randomise_bn_stats(model)
    return model.double(), torch.randn(2, 3, 32, 32, dtype=torch.float64)


def _densenet121() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=10)
    randomise_bn_stats(model)
    return model.double(), torch.randn(2, 3, 32, 32, dtype=torch.float64)


def _token_inputs() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 100, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # right padding
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask}


def _gpt2() -> tuple[nn.Module, object]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32, pad_token_id=0
    )
    config.num_labels = 4
    model = transformers.GPT2ForSequenceClassification(config)
    return model.double(), _token_inputs()


def _bert() -> tuple[nn.Module, object]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    config.num_labels = 3
    model = transformers.BertForSequenceClassification(config)
    return model.double(), _token_inputs()


MODELS: dict[str, tuple[Callable[[], tuple[nn.Module, object]], float]] = {
    "lenet": (_lenet, 0.05),
    "oddconv": (_oddconv, 0.05),
    "resnet18": (_resnet18, 0.01),
    "densenet121": (_densenet121, 0.01),
    "gpt2": (_gpt2, 0.02),
    "bert": (_bert, 0.02),
}


@functools.cache
def model_setup(name: str) -> tuple[nn.Module, list[nn.Module], object]:
    """``(global model, 3 perturbed clients, inputs)`` of ``MODELS[name]``, cached.

    Shared by the test files; tests must leave them as they found them.
    """
    build, scale = MODELS[name]
    model, inputs = build()
    return model, perturbed_clients(model, 3, scale), inputs
