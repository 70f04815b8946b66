"""The vectorised provenance engine equals the literal Algorithm 1 oracle.

Exactness tests run in float64 (models and inputs ``.double()``) so that the only
difference between engine and oracle is summation order.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from tests.provenance_models import model_setup, perturbed_clients
from tests.provenance_oracle import oracle_probs, oracle_scores
from tracefl.provenance import NeuronProvenance, ProvenanceResult

WEIGHTS = [30.0, 10.0, 60.0]


@pytest.fixture(scope="module")
def setups() -> dict[str, tuple[nn.Module, list[nn.Module], object]]:
    class Lazy(dict):
        def __missing__(self, key: str):
            return model_setup(key)

    return Lazy()


def _assert_matches_oracle(result: ProvenanceResult, oracle: Tensor) -> None:
    atol = 1e-9 * max(1.0, float(oracle.abs().max()))
    torch.testing.assert_close(result.scores, oracle, rtol=1e-5, atol=atol)
    assert torch.equal(result.traced, oracle.argmax(1))
    torch.testing.assert_close(result.probs, oracle_probs(oracle), rtol=1e-5, atol=1e-9)


LIGHT = ["lenet", "oddconv", "gpt2", "bert"]
SETTINGS = [
    *[(n, s, b) for n in LIGHT for s in (False, True) for b in (True, False)],
    ("resnet18", False, True),
    ("resnet18", True, False),
    ("densenet121", True, True),
]


@pytest.mark.parametrize(
    ("name", "scale", "enable_beta"),
    SETTINGS,
    ids=[
        f"{n}-{'pk' if s else 'raw'}-{'beta' if b else 'nobeta'}"
        for n, s, b in SETTINGS
    ],
)
def test_engine_equals_oracle(setups, name: str, scale: bool, enable_beta: bool):
    model, clients, inputs = setups[name]
    if name == "densenet121":  # the oracle is slow here: one input (B = 1)
        inputs = inputs[:1]
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
        layers="all",
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
    assert names[:3] == ("transformer.wte", "transformer.wpe", "transformer.h.0.ln_1")
    assert "transformer.h.0.attn.c_attn" in names  # GPT-2 Conv1D
    assert names[-1] == "score"
    paper = NeuronProvenance(gpt2, setups["gpt2"][1], WEIGHTS, layers="paper")
    assert paper.attribute(setups["gpt2"][2]).layer_names == names[2:]
    bert_names = NeuronProvenance(setups["bert"][0], setups["bert"][1], WEIGHTS)
    names = bert_names.attribute(setups["bert"][2]).layer_names
    assert names[:4] == (
        "bert.embeddings.word_embeddings",
        "bert.embeddings.token_type_embeddings",
        "bert.embeddings.position_embeddings",
        "bert.embeddings.LayerNorm",
    )
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
    clients = perturbed_clients(model, 3, 0.1)
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
    engine, inputs = _engine(setups, "resnet18")
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
