"""Every traced layer family and batch layout equals the literal oracle.

Float64 throughout; the oracle runs each input alone, so it needs no layout and
is independent of the engine's layout detection, shared-output gradients,
attention re-run and client gathering.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from tests.provenance_models import (
    FAMILY_MODELS,
    MODELS,
    family_setup,
    model_setup,
    perturbed_clients,
)
from tests.provenance_oracle import ExplicitAttention, oracle_scores
from tracefl.provenance import (
    TRACERS,
    GenericTracer,
    NeuronProvenance,
    ProvenanceCoverageWarning,
)

WEIGHTS = [30.0, 10.0, 60.0]

#: Layers each family model must trace (a sample, in forward order).
EXPECTED = {
    "textcnn": ["emb", "conv1", "conv2", "conv3", "head"],
    "volume": ["conv1", "norm1", "conv2", "norm2", "head"],
    "decoder": ["down", "bn", "up", "inorm", "up_grouped", "up1d", "inorm1d", "up3d"],
    "norms": ["proj", "ln", "rms", "bn_seq", "bn_flat", "head"],
    "bags": ["bag_sum", "bag_mean", "bilinear", "head"],
    "attention-bf": [
        "emb",
        "self_attn.in_proj",
        "self_attn.out_proj",
        "memory",
        "cross.in_proj",
        "cross.out_proj",
        "k_in",
        "v_in",
        "kv.q_proj",
        "kv.k_proj",
        "kv.v_proj",
        "kv.out_proj",
        "head",
    ],
    "transformer-t3": [
        "inp",
        "layer.self_attn.in_proj",
        "layer.self_attn.out_proj",
        "layer.norm1",
        "layer.linear1",
        "layer.linear2",
        "layer.norm2",
        "head",
    ],
    "flattened": ["major", "minor", "head"],
    "shared": ["table_proj", "table_out", "pos", "inp", "head"],
    "recurrent": ["w_in", "w_h", "head"],
    "weightnorm": ["conv", "fc", "head"],
    "vit": [
        "conv_proj",
        "encoder.layers.encoder_layer_0.self_attention.in_proj",
        "encoder.layers.encoder_layer_0.self_attention.out_proj",
        "heads.head",
    ],
}
EXPECTED["attention-sf"] = EXPECTED["attention-bf"]
EXPECTED["transformer-t5"] = EXPECTED["transformer-t3"]


def _assert_close(scores: Tensor, oracle: Tensor) -> None:
    atol = 1e-10 * max(1.0, float(oracle.abs().max()))
    torch.testing.assert_close(scores, oracle, rtol=1e-8, atol=atol)


@pytest.mark.parametrize("name", list(FAMILY_MODELS))
def test_family_equals_oracle(name: str):
    model, clients, inputs = family_setup(name)
    engine = NeuronProvenance(model, clients, WEIGHTS, scale_by_data_share=True)
    result = engine.attribute(inputs)
    oracle, names = oracle_scores(
        model, clients, WEIGHTS, inputs, scale_by_data_share=True, layers="all"
    )
    _assert_close(result.scores, oracle)
    assert list(result.layer_names) == names
    traced = list(result.layer_names)
    assert [n for n in traced if n in EXPECTED[name]] == EXPECTED[name]
    assert result.coverage.untraced_share < 0.05 or name == "shared"


def test_explicit_attention_is_multihead_attention():
    """The oracle's written-out attention computes what nn.MultiheadAttention does."""
    torch.manual_seed(0)
    for kwargs in ({"batch_first": True}, {"kdim": 6, "vdim": 5}):
        mha = nn.MultiheadAttention(8, 2, **kwargs).double().eval()
        explicit = ExplicitAttention(mha)
        shape = (3, 4, 8) if kwargs.get("batch_first") else (4, 3, 8)
        q = torch.randn(shape, dtype=torch.float64)
        k = torch.randn(*shape[:2], kwargs.get("kdim", 8), dtype=torch.float64)
        v = torch.randn(*shape[:2], kwargs.get("vdim", 8), dtype=torch.float64)
        pad = torch.zeros(3, 4, dtype=torch.float64)
        pad[0, 2:] = float("-inf")
        mask = torch.randn(4, 4, dtype=torch.float64)
        expected = mha(q, k, v, key_padding_mask=pad, attn_mask=mask)
        got = explicit(q, k, v, key_padding_mask=pad, attn_mask=mask)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


# --------------------------------------------------------- batch permutation
def _permute(inputs: object, perm: list[int]) -> object:
    if isinstance(inputs, Tensor):
        return inputs[perm]
    return {k: v[perm] for k, v in inputs.items()}


def _setup(name: str):
    return model_setup(name) if name in MODELS else family_setup(name)


@pytest.mark.parametrize("name", [*MODELS, *FAMILY_MODELS])
def test_permuting_the_batch_permutes_the_rows(name: str):
    model, clients, inputs = _setup(name)
    batch = (
        next(iter(inputs.values())).shape[0]
        if isinstance(inputs, dict)
        else len(inputs)
    )
    perm = list(range(1, batch)) + [0]
    engine = NeuronProvenance(model, clients, WEIGHTS)
    base = engine.attribute(inputs)
    results = [engine.attribute(_permute(inputs, perm))]  # cached layouts
    if name not in ("resnet18", "densenet121"):  # plain batch-first CNNs: slow
        fresh = NeuronProvenance(model, clients, WEIGHTS)
        results.append(fresh.attribute(_permute(inputs, perm)))  # probed anew
    for result in results:
        torch.testing.assert_close(
            result.scores, base.scores[perm], rtol=1e-9, atol=1e-12
        )
        assert torch.equal(result.traced, base.traced[perm])
        assert torch.equal(result.predicted_labels, base.predicted_labels[perm])


# ------------------------------------------------------------------- chunking
@pytest.mark.parametrize("name", ["attention-sf", "bags", "decoder", "shared"])
@pytest.mark.parametrize("client_chunk_size", [1, 2])
def test_client_chunks_equal_one_gather(name: str, client_chunk_size: int):
    model, clients, inputs = family_setup(name)
    whole = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    chunked = NeuronProvenance(
        model, clients, WEIGHTS, client_chunk_size=client_chunk_size
    ).attribute(inputs)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-12, atol=1e-12)


def test_client_chunks_equal_oracle():
    model, clients, inputs = model_setup("oddconv")
    result = NeuronProvenance(model, clients, WEIGHTS, client_chunk_size=2).attribute(
        inputs
    )
    oracle, _ = oracle_scores(model, clients, WEIGHTS, inputs, layers="all")
    _assert_close(result.scores, oracle)


@pytest.mark.parametrize(
    "name", ["shared", "flattened", "transformer-t3", "attention-bf"]
)
def test_input_chunks_with_a_single_input_left(name: str):
    """Chunks of 2 and 1 inputs (a batch of one probes with two inputs)."""
    model, clients, inputs = family_setup(name)
    whole = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    chunked = NeuronProvenance(model, clients, WEIGHTS, chunk_size=2).attribute(inputs)
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------- weights, user layers
def _effective_weights(model: nn.Module) -> dict[str, Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.state_dict(keep_vars=True).items()
        if not n.endswith(("weight_g", "weight_v"))
    } | {
        f"{n}.weight": torch._weight_norm(m.weight_v, m.weight_g, 0).detach()
        for n, m in model.named_modules()
        if hasattr(m, "weight_g")
    }


def test_old_weight_norm_hook_uses_the_effective_weight():
    def build(norm: bool) -> nn.Module:
        torch.manual_seed(3)
        net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
        if norm:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                torch.nn.utils.weight_norm(net[0])
        return net

    normed, plain = build(True), build(False)
    gen = torch.Generator().manual_seed(4)
    clients = []
    for _ in range(3):
        state = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                 for k, v in normed.state_dict().items()}  # fmt: skip
        clients.append(state)
    with torch.no_grad():
        plain[0].weight.copy_(
            torch._weight_norm(normed[0].weight_v, normed[0].weight_g, 0)
        )
        plain[0].bias.copy_(normed[0].bias)
        plain[2].load_state_dict(normed[2].state_dict())
    plain_clients = [
        {
            "0.weight": torch._weight_norm(s["0.weight_v"], s["0.weight_g"], 0),
            "0.bias": s["0.bias"],
            "2.weight": s["2.weight"],
            "2.bias": s["2.bias"],
        }
        for s in clients
    ]
    x = torch.randn(4, 4, dtype=torch.float64)
    r_normed = NeuronProvenance(normed, clients, WEIGHTS).attribute(x)
    r_plain = NeuronProvenance(plain, plain_clients, WEIGHTS).attribute(x)
    torch.testing.assert_close(r_normed.scores, r_plain.scores, rtol=1e-10, atol=1e-12)
    assert r_normed.layer_names == ("0", "2")
    # The paper's set, like the original artifact, skips a computed weight.
    paper = NeuronProvenance(normed, clients, WEIGHTS, layers="paper")
    with pytest.warns(ProvenanceCoverageWarning):
        assert paper.attribute(x).layer_names == ("2",)


class ScaledLinear(nn.Module):
    """A user's own layer, linear in its raw parameters (no tracer knows it)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4))
        self.b = nn.Parameter(torch.randn(5))
        self.inner = nn.Linear(5, 5)  # belongs to the layer: traced with it

    def forward(self, x: Tensor) -> Tensor:
        return (
            2.0 * (x @ self.w.T)
            + self.b
            + self.inner(x @ torch.ones(4, 5, dtype=x.dtype))
        )


def _user_model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), ScaledLinear(), nn.Linear(5, 2)
    ).double()


def test_generic_tracer_traces_a_users_layer():
    model = _user_model()
    clients = perturbed_clients(model, 3, 0.05)
    x = torch.randn(3, 3, dtype=torch.float64)
    with pytest.warns(ProvenanceCoverageWarning, match="ScaledLinear"):
        default = NeuronProvenance(model, clients, WEIGHTS).attribute(x)
    missing = {u.name: u.reason for u in default.coverage.untraced}
    assert set(missing) == {"2.w", "2.b"}
    assert "no tracer for ScaledLinear" in missing["2.w"]
    layers = (*TRACERS, GenericTracer((ScaledLinear,)))
    result = NeuronProvenance(model, clients, WEIGHTS, layers=layers).attribute(x)
    assert result.layer_set == "custom"
    assert result.layer_names == ("0", "2", "3")
    assert result.coverage.untraced == ()
    oracle, names = oracle_scores(
        model, clients, WEIGHTS, x, layers="all", extra_types=(ScaledLinear,)
    )
    assert names == ["0", "2", "3"]
    _assert_close(result.scores, oracle)


def test_engine_leaves_clients_untouched():
    model, clients, inputs = family_setup("weightnorm")
    states = [copy.deepcopy(c.state_dict()) for c in clients]
    NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    for c, s in zip(clients, states, strict=True):
        for k, v in c.state_dict().items():
            assert torch.equal(v, s[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "name", ["attention-bf", "shared", "decoder", "bags", "textcnn"]
)
def test_cuda_matches_cpu_for_every_family(name: str):
    model, clients, inputs = family_setup(name)
    cpu = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    gpu = NeuronProvenance(model, clients, WEIGHTS, device="cuda").attribute(inputs)
    assert gpu.scores.device.type == "cuda"
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-9, atol=1e-12)
    assert next(model.parameters()).device.type == "cpu"
