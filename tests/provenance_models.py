"""Models, client sets and inputs shared by the provenance engine tests.

Everything is float64 so that engine and oracle differ only by summation order.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)


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
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
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
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32, pad_token_id=0
    )
    config.num_labels = 4
    model = GPT2ForSequenceClassification(config)
    return model.double(), _token_inputs()


def _bert() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    config.num_labels = 3
    model = BertForSequenceClassification(config)
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


# ------------------------------------------------------- every traced family
class TextCNN(nn.Module):
    """Embedding -> Conv1d in every padding mode (reflect, circular, replicate)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, padding_idx=0)
        self.conv1 = nn.Conv1d(8, 6, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv1d(
            6, 6, 3, padding="same", dilation=2, padding_mode="circular"
        )
        self.conv3 = nn.Conv1d(6, 4, 2, stride=2, padding=1, padding_mode="replicate")
        self.head = nn.Linear(4, 5)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.emb(ids).transpose(1, 2)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(self.conv3(x).mean(2))


class VolumeNet(nn.Module):
    """Conv3d (reflect padding, grouped, strided), GroupNorm, BatchNorm3d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 4, 3, padding=1, padding_mode="reflect")
        self.norm1 = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv3d(4, 4, (1, 3, 3), stride=2, groups=2, bias=False)
        self.norm2 = nn.BatchNorm3d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.norm1(self.conv1(x)))
        x = torch.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean((2, 3, 4)))


class DecoderNet(nn.Module):
    """Transposed convolutions (1d/2d/3d; stride, output_padding, groups,
    dilation), BatchNorm2d, InstanceNorm with and without running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.up_grouped = nn.ConvTranspose2d(6, 4, 2, dilation=2, groups=2)
        self.up1d = nn.ConvTranspose1d(4, 3, 3, stride=2, bias=False)
        self.inorm1d = nn.InstanceNorm1d(3, affine=True, track_running_stats=True)
        self.up3d = nn.ConvTranspose3d(1, 2, (1, 2, 2), stride=(1, 2, 2))
        self.head = nn.Linear(3 + 2, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.down(x)))
        x = torch.relu(self.inorm(self.up(x)))
        x = torch.relu(self.up_grouped(x))
        line = self.inorm1d(self.up1d(x.mean(2)))
        vol = self.up3d(x.mean(1, keepdim=True).unsqueeze(2))
        return self.head(torch.cat([line.mean(2), vol.mean((2, 3, 4))], dim=1))


class NormNet(nn.Module):
    """LayerNorm over two dims, RMSNorm, BatchNorm1d on (N, C) and (N, C, L)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.ln = nn.LayerNorm((5, 6))
        self.rms = nn.RMSNorm(6)
        self.bn_seq = nn.BatchNorm1d(5)
        self.bn_flat = nn.BatchNorm1d(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:  # (B, 5, 4)
        h = self.ln(torch.tanh(self.proj(x)))
        h = self.bn_seq(self.rms(h))
        return self.head(self.bn_flat(h.mean(1)))


class BagNet(nn.Module):
    """EmbeddingBag (flat ids with offsets and weights; 2-d ids, padding), Bilinear."""

    def __init__(self) -> None:
        super().__init__()
        self.bag_sum = nn.EmbeddingBag(30, 6, mode="sum")
        self.bag_mean = nn.EmbeddingBag(30, 6, mode="mean", padding_idx=0)
        self.bilinear = nn.Bilinear(6, 6, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, ids: Tensor) -> Tensor:  # (B, L) int64
        b, length = ids.shape
        offsets = torch.arange(0, b * length, length, device=ids.device)
        dtype = self.head.weight.dtype
        weights = torch.linspace(0.5, 1.5, length, dtype=dtype, device=ids.device)
        weights = weights.repeat(b)
        bags = self.bag_sum(ids.reshape(-1), offsets, per_sample_weights=weights)
        means = self.bag_mean(ids)
        return self.head(torch.tanh(self.bilinear(bags, means)))


class AttentionNet(nn.Module):
    """nn.MultiheadAttention: self-attention with a padding mask whose weights
    are used downstream; cross-attention (fused, seq-first, float mask);
    separate q/k/v weights (kdim, vdim)."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Embedding(40, 8)
        self.self_attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.cross = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.memory = nn.Linear(8, 8)
        self.kv = nn.MultiheadAttention(8, 2, kdim=6, vdim=5, batch_first=batch_first)
        self.k_in = nn.Linear(8, 6)
        self.v_in = nn.Linear(8, 5)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.emb(input_ids)  # (B, T, E)
        pad = attention_mask == 0
        if not self.batch_first:
            x = x.transpose(0, 1)
        h, w = self.self_attn(x, x, x, key_padding_mask=pad)  # w: (B, T, T)
        mem = torch.tanh(self.memory(h))
        t = h.shape[1] if self.batch_first else h.shape[0]
        bias = torch.full((t, t), -1.0, dtype=h.dtype, device=h.device).triu(1)
        h2, _ = self.cross(h, mem, mem, attn_mask=bias, need_weights=False)
        h3, _ = self.kv(h2, self.k_in(h2), self.v_in(h2), need_weights=False)
        h3 = h3 if self.batch_first else h3.transpose(0, 1)
        return self.head(h3.mean(1)) + w.sum((1, 2))[:, None]


class SeqFirstTransformer(nn.Module):
    """PyTorch's own encoder layer with the default batch_first=False."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, 4)
        h = self.layer(self.inp(x).transpose(0, 1))  # (T, B, 8)
        return self.head(h.mean(0))


class FlattenedNet(nn.Module):
    """Linear layers called on (B*T, D) and (T*B, D) flattened batches."""

    def __init__(self) -> None:
        super().__init__()
        self.major = nn.Linear(4, 6)
        self.minor = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, 4)
        b, t, d = x.shape
        h = torch.tanh(self.major(x.reshape(b * t, d))).reshape(b, t, 6)
        seq = h.transpose(0, 1).reshape(t * b, 6)  # rows t * B + b
        h = torch.tanh(self.minor(seq)).reshape(t, b, 6).transpose(0, 1)
        return self.head(h.mean(1))


class SharedTableNet(nn.Module):
    """Layers run once for the whole batch on input-independent tensors: a
    projection chain of a learned table and position embeddings of (T,) ids."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(5, 6))
        self.table_proj = nn.Linear(6, 6)
        self.table_out = nn.Linear(6, 6)
        self.pos = nn.Embedding(5, 6)
        self.inp = nn.Linear(3, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, 5, 3)
        bias = self.table_out(torch.tanh(self.table_proj(self.table)))  # (5, 6)
        pos = self.pos(torch.arange(x.shape[1], device=x.device))  # (5, 6), no batch
        h = torch.tanh(self.inp(x) + bias) * (1 + pos)
        return self.head(h.mean(1))


class RecurrentCell(nn.Module):
    """A hand-written RNN: the same two Linear layers called at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Linear(3, 5)
        self.w_h = nn.Linear(5, 5, bias=False)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, 3)
        h = torch.zeros(x.shape[0], 5, dtype=x.dtype, device=x.device)
        for t in range(x.shape[1]):
            h = torch.tanh(self.w_in(x[:, t]) + self.w_h(h))
        return self.head(h)


class WeightNormNet(nn.Module):
    """Weights computed by parametrizations (weight_norm, orthogonal-free)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 4, 3))
        self.fc = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(torch.tanh(self.fc(h)))


def _ids(batch: int, length: int, vocab: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=gen)


def _family(make: Callable[..., nn.Module], *args) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        model = make(*args).double()
        randomise_bn_stats(model)
        return model

    return build


def _floats(*shape: int) -> Tensor:
    gen = torch.Generator().manual_seed(11)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _attention_inputs() -> dict[str, Tensor]:
    ids = _ids(3, 4, 40, 12)
    mask = torch.ones_like(ids)
    mask[1, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _vit() -> nn.Module:
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
        mlp_dim=16, num_classes=4, dropout=0.0,
    )  # fmt: skip
    nn.init.normal_(vit.heads.head.weight)  # zero-initialised by torchvision
    return vit


#: name -> (model builder, inputs builder, client noise scale)
FAMILY_MODELS: dict[
    str, tuple[Callable[[], nn.Module], Callable[[], object], float]
] = {
    "textcnn": (_family(TextCNN), lambda: _ids(3, 9, 50, 1), 0.05),
    "volume": (_family(VolumeNet), lambda: _floats(3, 2, 4, 6, 5), 0.05),
    "decoder": (_family(DecoderNet), lambda: _floats(3, 3, 6, 6), 0.05),
    "norms": (_family(NormNet), lambda: _floats(3, 5, 4), 0.05),
    "bags": (_family(BagNet), lambda: _ids(3, 4, 30, 2), 0.05),
    "attention-bf": (_family(AttentionNet, True), _attention_inputs, 0.05),
    "attention-sf": (_family(AttentionNet, False), _attention_inputs, 0.05),
    # Sequence length 3 == batch size 3: the layout cannot be told from shapes.
    "transformer-t3": (_family(SeqFirstTransformer), lambda: _floats(3, 3, 4), 0.05),
    "transformer-t5": (_family(SeqFirstTransformer), lambda: _floats(3, 5, 4), 0.05),
    "flattened": (_family(FlattenedNet), lambda: _floats(3, 4, 4), 0.05),
    "shared": (_family(SharedTableNet), lambda: _floats(3, 5, 3), 0.05),
    "recurrent": (_family(RecurrentCell), lambda: _floats(3, 4, 3), 0.05),
    "weightnorm": (_family(WeightNormNet), lambda: _floats(3, 2, 6, 6), 0.05),
    "vit": (_family(_vit), lambda: _floats(3, 3, 16, 16), 0.05),
}


@functools.cache
def family_setup(name: str) -> tuple[nn.Module, list[nn.Module], object]:
    """``(global model, 3 perturbed clients, inputs)`` of ``FAMILY_MODELS[name]``."""
    build, inputs, scale = FAMILY_MODELS[name]
    model = build()
    return model, perturbed_clients(model, 3, scale), inputs()
