"""The vectorised provenance engine equals the literal Algorithm 1 oracle.

Exactness tests run in float64 (models and inputs ``.double()``) so that the only
difference between engine and oracle is summation order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import Tensor, nn

from tests.provenance_oracle import oracle_probs, oracle_scores
from tracefl.provenance import NeuronProvenance, ProvenanceResult

WEIGHTS = [30.0, 10.0, 60.0]


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


def _perturbed_clients(model: nn.Module, k: int, scale: float) -> list[nn.Module]:
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


def _randomise_bn_stats(model: nn.Module) -> None:
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
    _randomise_bn_stats(model)
    return model.double(), torch.randn(2, 3, 32, 32, dtype=torch.float64)


def _densenet121() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = torchvision.models.densenet121(num_classes=10)
    _randomise_bn_stats(model)
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


@pytest.fixture(scope="module")
def setups() -> dict[str, tuple[nn.Module, list[nn.Module], object]]:
    cache: dict[str, tuple[nn.Module, list[nn.Module], object]] = {}

    class Lazy(dict):
        def __missing__(self, key: str):
            build, scale = MODELS[key]
            model, inputs = build()
            cache[key] = (model, _perturbed_clients(model, 3, scale), inputs)
            self[key] = cache[key]
            return cache[key]

    return Lazy()


def _assert_matches_oracle(result: ProvenanceResult, oracle: Tensor) -> None:
    atol = 1e-9 * max(1.0, float(oracle.abs().max()))
    torch.testing.assert_close(result.scores, oracle, rtol=1e-5, atol=atol)
    assert torch.equal(result.traced, oracle.argmax(1))
    torch.testing.assert_close(result.probs, oracle_probs(oracle), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("enable_beta", [True, False], ids=["beta", "nobeta"])
@pytest.mark.parametrize("scale", [False, True], ids=["raw", "pk"])
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_equals_oracle(setups, name: str, scale: bool, enable_beta: bool):
    model, clients, inputs = setups[name]
    engine = NeuronProvenance(
        model,
        clients,
        WEIGHTS,
        ["a", "b", "c"],
        enable_beta=enable_beta,
        scale_by_data_share=scale,
    )
    result = engine.attribute(inputs, return_per_layer=True)
    oracle, layer_names = oracle_scores(
        model,
        clients,
        WEIGHTS,
        inputs,
        enable_beta=enable_beta,
        scale_by_data_share=scale,
    )
    _assert_matches_oracle(result, oracle)
    assert list(result.layer_names) == layer_names
    batch = oracle.shape[0]
    assert result.per_layer is not None
    assert result.per_layer.shape == (batch, len(layer_names), 3)
    assert result.scores.dtype == torch.float64
    assert result.traced_client_ids == [["a", "b", "c"][i] for i in result.traced]
    assert result.peak_memory_bytes > 0


def test_traced_layer_families(setups):
    gpt2 = setups["gpt2"][0]
    engine = NeuronProvenance(gpt2, setups["gpt2"][1], WEIGHTS)
    names = engine.attribute(setups["gpt2"][2]).layer_names
    assert names[0] == "transformer.h.0.ln_1"
    assert "transformer.h.0.attn.c_attn" in names  # GPT-2 Conv1D
    assert names[-1] == "score"
    bert_names = NeuronProvenance(setups["bert"][0], setups["bert"][1], WEIGHTS)
    names = bert_names.attribute(setups["bert"][2]).layer_names
    assert names[0] == "bert.embeddings.LayerNorm"
    assert names[-1] == "classifier"


def test_float32_close_to_float64(setups):
    model64, clients64, inputs64 = setups["resnet18"]
    model32 = copy.deepcopy(model64).float()
    clients32 = [copy.deepcopy(c).float() for c in clients64]
    r64 = NeuronProvenance(model64, clients64, WEIGHTS).attribute(inputs64)
    r32 = NeuronProvenance(model32, clients32, WEIGHTS).attribute(inputs64.float())
    assert r32.scores.dtype == torch.float64
    scale = float(r64.scores.abs().max())
    torch.testing.assert_close(r32.scores, r64.scores, rtol=1e-4, atol=1e-4 * scale)


# ------------------------------------------------------------------ invariants
def _engine(setups, name="lenet", **kwargs) -> tuple[NeuronProvenance, object]:
    model, clients, inputs = setups[name]
    return NeuronProvenance(model, clients, WEIGHTS, **kwargs), inputs


def test_identical_clients_get_equal_probabilities(setups):
    model, _, inputs = setups["lenet"]
    clients = [copy.deepcopy(model) for _ in range(4)]
    result = NeuronProvenance(model, clients, [1, 2, 3, 4]).attribute(inputs)
    torch.testing.assert_close(
        result.probs, torch.full_like(result.probs, 0.25), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("scale", [False, True])
def test_permuting_clients_permutes_output(setups, scale: bool):
    model, clients, inputs = setups["oddconv"]
    perm = [2, 0, 1]
    base = NeuronProvenance(model, clients, WEIGHTS, scale_by_data_share=scale)
    permuted = NeuronProvenance(
        model,
        [clients[i] for i in perm],
        [WEIGHTS[i] for i in perm],
        scale_by_data_share=scale,
    )
    r0, r1 = base.attribute(inputs), permuted.attribute(inputs)
    torch.testing.assert_close(r1.scores, r0.scores[:, perm], rtol=1e-12, atol=1e-12)
    assert torch.equal(r1.predicted_labels, r0.predicted_labels)


def test_linearity_in_client_parameters():
    torch.manual_seed(1)
    model = nn.Linear(6, 4).double()
    clients = _perturbed_clients(model, 3, 0.1)
    inputs = torch.randn(5, 6, dtype=torch.float64)
    doubled = copy.deepcopy(clients)
    with torch.no_grad():
        for p in doubled[1].parameters():
            p.mul_(2)
    r0 = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    r1 = NeuronProvenance(model, doubled, WEIGHTS).attribute(inputs)
    torch.testing.assert_close(r1.scores[:, 1], 2 * r0.scores[:, 1])
    torch.testing.assert_close(r1.scores[:, [0, 2]], r0.scores[:, [0, 2]])
    # One Linear layer: T_k = c . (W_k x + b_k) with c = onehot(prediction).
    logits = model(inputs)
    pred = logits.argmax(1)
    expected = torch.stack(
        [
            (inputs @ c.weight.T + c.bias).gather(1, pred[:, None])[:, 0]
            for c in clients
        ],
        dim=1,
    )
    torch.testing.assert_close(r0.scores, expected.detach())


def test_per_layer_sums_to_scores(setups):
    engine, inputs = _engine(setups, "resnet18", scale_by_data_share=True)
    result = engine.attribute(inputs, return_per_layer=True)
    assert result.per_layer is not None
    assert torch.equal(result.per_layer.sum(1), result.scores)
    assert engine.attribute(inputs).per_layer is None


def test_deterministic(setups):
    engine, inputs = _engine(setups, "densenet121")
    r0, r1 = engine.attribute(inputs), engine.attribute(inputs)
    assert torch.equal(r0.scores, r1.scores)
    assert torch.equal(r0.probs, r1.probs)


@pytest.mark.parametrize("name", ["lenet", "gpt2"])
def test_state_dicts_equal_modules(setups, name: str):
    model, clients, inputs = setups[name]
    states = [dict(c.state_dict()) for c in clients]
    mixed = [states[0], clients[1], states[2]]
    r0 = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    r1 = NeuronProvenance(model, mixed, WEIGHTS).attribute(inputs)
    assert torch.equal(r0.scores, r1.scores)


@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_chunk_size_does_not_change_scores(setups, name: str):
    model, clients, inputs = setups[name]
    r1 = NeuronProvenance(model, clients, WEIGHTS, chunk_size=1).attribute(inputs)
    r_all = NeuronProvenance(model, clients, WEIGHTS, chunk_size=64).attribute(inputs)
    torch.testing.assert_close(r1.scores, r_all.scores, rtol=1e-12, atol=1e-12)
    assert torch.equal(r1.predicted_labels, r_all.predicted_labels)


def test_predicted_labels_match_global_model(setups):
    model, clients, inputs = setups["resnet18"]
    with torch.no_grad():
        expected = model.eval()(inputs).argmax(1)
    result = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    assert torch.equal(result.predicted_labels, expected)


# ------------------------------------------------------------- no side effects
def _assert_pristine(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
        assert not getattr(module, "_backward_pre_hooks", {}), name


def test_model_is_left_untouched(setups):
    model, clients, inputs = setups["resnet18"]
    model.train()
    frozen = model.conv1.weight
    frozen.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs = set(vars(model))
    try:
        NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
        _assert_pristine(model)
        assert model.training and all(m.training for m in model.modules())
        assert not frozen.requires_grad
        assert all(
            p.requires_grad for n, p in model.named_parameters() if n != "conv1.weight"
        )
        assert all(p.grad is None for p in model.parameters())
        assert set(vars(model)) == attrs
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k
    finally:
        model.eval()
        frozen.requires_grad_(True)


class InPlaceAfterLayer(nn.Module):
    """Modifies a traced layer's input in place after the call (rejected)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = x * 1.0
        out = self.fc(h)
        h.mul_(2)
        return out + h.sum(1, keepdim=True)


def test_hooks_removed_and_flags_restored_after_error():
    from tracefl.provenance import ProvenanceInputError

    model = InPlaceAfterLayer().train()
    model.fc.bias.requires_grad_(False)
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1.0])
    with pytest.raises(ProvenanceInputError, match="modified in place"):
        engine.attribute(torch.randn(2, 4))
    _assert_pristine(model)
    assert model.training
    assert model.fc.weight.requires_grad and not model.fc.bias.requires_grad
    # An error raised inside the forward pass (bad input) as well.
    with pytest.raises(ProvenanceInputError):
        engine.attribute(torch.randn(2, 5))
    _assert_pristine(model)
    assert model.training and not model.fc.bias.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_cuda_matches_cpu(setups, name: str):
    model, clients, inputs = setups[name]
    cpu = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    gpu_engine = NeuronProvenance(model, clients, WEIGHTS, device="cuda")
    gpu = gpu_engine.attribute(inputs)
    assert gpu.scores.device.type == "cuda"
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-6, atol=1e-9)
    assert torch.equal(gpu.traced.cpu(), cpu.traced)
    assert gpu.peak_memory_bytes > 0
    assert next(model.parameters()).device.type == "cpu"  # user model not moved
