"""The coverage report: what is traced, what is not and why, and the shares.

Shares are checked against plain autograd on the global model: for a layer
linear in its parameters, ``<theta_l, dY/d theta_l> = sum_b t_{l, global}[b]``.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from tests.provenance_models import family_setup, model_setup, perturbed_clients
from tracefl.provenance import (
    NeuronProvenance,
    ProvenanceCoverageWarning,
    ProvenanceResult,
)

WEIGHTS = [30.0, 10.0, 60.0]


def _signals(model: nn.Module, inputs: object, target: Tensor) -> dict[str, float]:
    """``<theta_p, dY/d theta_p>`` per parameter, ``Y = sum_b logit[b, target_b]``."""
    model = copy.deepcopy(model).eval()
    out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    logits = out if isinstance(out, Tensor) else out.logits
    y = logits.gather(1, target[:, None]).sum()
    named = dict(model.named_parameters())
    grads = torch.autograd.grad(y, list(named.values()), allow_unused=True)
    return {
        n: 0.0 if g is None else float((p * g).sum())
        for (n, p), g in zip(named.items(), grads, strict=True)
    }


def _assert_shares(result: ProvenanceResult, model: nn.Module, inputs: object) -> None:
    signal = _signals(model, inputs, result.targets)
    layers = {
        t.name: sum(signal[p] for p in t.parameters) for t in result.coverage.traced
    }
    untraced = {u.name: signal[u.name] for u in result.coverage.untraced}
    total = sum(abs(v) for v in layers.values()) + sum(
        abs(v) for v in untraced.values()
    )
    for t in result.coverage.traced:
        assert t.share == pytest.approx(
            abs(layers[t.name]) / total, rel=1e-6, abs=1e-12
        )
    for u in result.coverage.untraced:
        assert u.share == pytest.approx(
            abs(untraced[u.name]) / total, rel=1e-6, abs=1e-12
        )
    shares = [t.share for t in result.coverage.traced] + [
        u.share for u in result.coverage.untraced
    ]
    assert sum(shares) == pytest.approx(1.0)
    assert result.coverage.untraced_share == pytest.approx(
        sum(u.share for u in result.coverage.untraced)
    )


def test_paper_set_reports_batchnorm_untraced_with_its_share():
    model, clients, inputs = model_setup("resnet18")
    with pytest.warns(ProvenanceCoverageWarning, match=r"BatchNorm2d"):
        result = NeuronProvenance(model, clients, WEIGHTS, layers="paper").attribute(
            inputs
        )
    coverage = result.coverage
    assert coverage.layer_set == "paper"
    bn = [u for u in coverage.untraced if u.module_type == "BatchNorm2d"]
    assert len(bn) == len(coverage.untraced) == 2 * 20  # weight and bias of each
    assert all(u.reason == "BatchNorm2d is not in the 'paper' layer set" for u in bn)
    assert set(coverage.untraced_share_by_type) == {"BatchNorm2d"}
    assert 0 < coverage.untraced_share < 1
    assert [t.name for t in coverage.traced] == list(result.layer_names)
    conv = coverage.traced[0]
    assert (conv.name, conv.module_type, conv.tracer) == ("conv1", "Conv2d", "Conv")
    assert conv.parameters == ("conv1.weight",) and conv.num_params == 64 * 3 * 49
    _assert_shares(result, model, inputs)


@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_all_set_traces_everything(name: str):
    model, clients, inputs = model_setup(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvenanceCoverageWarning)
        result = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    assert result.coverage.untraced == ()
    assert result.coverage.untraced_share == 0
    _assert_shares(result, model, inputs)


def test_attention_shares_and_raw_parameters():
    """ViT: MHA projections traced; class token and position embedding are raw
    parameters used in the model's own forward."""
    model, clients, inputs = family_setup("vit")
    result = NeuronProvenance(
        model, clients, WEIGHTS, untraced_warning_threshold=1.0
    ).attribute(inputs)
    untraced = {u.name: u for u in result.coverage.untraced}
    assert set(untraced) == {"class_token", "encoder.pos_embedding"}
    assert untraced["class_token"].reason.startswith("no tracer for VisionTransformer")
    assert untraced["encoder.pos_embedding"].module_type == "Encoder"
    attn = [t for t in result.coverage.traced if t.tracer == "MultiheadAttention"]
    assert [t.name.rsplit(".", 1)[1] for t in attn] == ["in_proj", "out_proj"]
    assert attn[0].parameters == (
        "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
        "encoder.layers.encoder_layer_0.self_attention.in_proj_bias",
    )
    _assert_shares(result, model, inputs)


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.rnn = cell(4, 6, batch_first=True)
        self.unused = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_layers_are_reported_untraced(cell: type[nn.Module]):
    torch.manual_seed(0)
    model = RecurrentClassifier(cell).double()
    clients = perturbed_clients(model, 3, 0.05)
    ids = torch.randint(0, 20, (4, 5))
    with pytest.warns(ProvenanceCoverageWarning, match=cell.__name__):
        result = NeuronProvenance(model, clients, WEIGHTS).attribute(ids)
    untraced = {u.name: u for u in result.coverage.untraced}
    rnn = [u for u in untraced.values() if u.module_type == cell.__name__]
    assert len(rnn) == 4 and all(u.reason.startswith("recurrent layer") for u in rnn)
    assert (
        untraced["unused.weight"].reason == "its layer did not run in the forward pass"
    )
    assert untraced["unused.weight"].share == 0
    assert result.layer_names == ("emb", "head")
    _assert_shares(result, model, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProvenanceCoverageWarning)
        NeuronProvenance(
            model, clients, WEIGHTS, untraced_warning_threshold=1.0
        ).attribute(ids)


def test_attention_bias_kv_and_max_norm_are_reported():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 8, max_norm=1.0)
            self.pos = nn.Embedding(5, 8)
            self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, ids: Tensor) -> Tensor:
            x = self.emb(ids) + self.pos(torch.arange(ids.shape[1]))
            return self.head(self.attn(x, x, x)[0].mean(1))

    torch.manual_seed(0)
    model = Net().double()
    clients = perturbed_clients(model, 2, 0.05)
    ids = torch.randint(0, 20, (3, 5))
    result = NeuronProvenance(
        model, clients, [1, 2], untraced_warning_threshold=1.0
    ).attribute(ids)
    reasons = {u.name: u.reason for u in result.coverage.untraced}
    assert reasons["emb.weight"].startswith("max_norm renormalises")
    assert reasons["attn.bias_k"] == (
        "not part of the layers the MultiheadAttention tracer traces"
    )
    assert set(reasons) == {"emb.weight", "attn.bias_k", "attn.bias_v"}
    _assert_shares(result, model, ids)


def test_tied_weights_are_counted_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))

    torch.manual_seed(0)
    model = Tied().double()
    clients = [dict(c.state_dict()) for c in perturbed_clients(model, 2, 0.05)]
    result = NeuronProvenance(model, clients, [1, 2]).attribute(
        torch.randn(3, 4, dtype=torch.float64)
    )
    assert result.coverage.untraced == ()
    assert [t.parameters for t in result.coverage.traced][:2] == [
        ("a.weight", "a.bias"),
        ("b.weight", "b.bias"),
    ]
