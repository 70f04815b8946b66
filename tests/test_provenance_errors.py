"""Bad models, clients, weights and inputs raise ProvenanceInputError early."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from tracefl.provenance import NeuronProvenance, ProvenanceInputError


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode=padding_mode)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class OtherCNN(SmallCNN):
    pass


class NoTracedLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.emb(x).mean(1))


class SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.fc(x)))


class ListOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.fc(x)]


@pytest.fixture()
def model() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture()
def clients(model: SmallCNN) -> list[nn.Module]:
    return [copy.deepcopy(model) for _ in range(3)]


X = torch.randn(2, 3, 8, 8)


def test_valid_setup_works(model, clients):
    result = NeuronProvenance(model, clients, [1, 2, 3]).attribute(X)
    assert result.scores.shape == (2, 3)
    assert result.client_ids == ("0", "1", "2")


# -------------------------------------------------------------------- clients
def test_parameter_shape_mismatch_names_client_and_parameter(model, clients):
    clients[1] = SmallCNN(classes=5)
    with pytest.raises(
        ProvenanceInputError,
        match=r"client 'b' parameter 'fc\.weight' has shape \(5, 4\).*\(10, 4\)",
    ):
        NeuronProvenance(model, clients, [1, 2, 3], ["a", "b", "c"])


def test_other_architecture_class(model, clients):
    clients[2] = OtherCNN()
    with pytest.raises(ProvenanceInputError, match="client 'c' is a OtherCNN"):
        NeuronProvenance(model, clients, [1, 2, 3], ["a", "b", "c"])


def test_missing_key_in_state_dict(model, clients):
    state = dict(clients[0].state_dict())
    del state["conv.bias"]
    with pytest.raises(ProvenanceInputError, match="client '0' is missing.*conv.bias"):
        NeuronProvenance(model, [state, *clients[1:]], [1, 2, 3])


def test_extra_key_in_state_dict(model, clients):
    state = dict(clients[0].state_dict())
    state["head.weight"] = torch.zeros(2)
    with pytest.raises(ProvenanceInputError, match="unexpected key 'head.weight'"):
        NeuronProvenance(model, [state, *clients[1:]], [1, 2, 3])


def test_state_dict_without_buffers_is_accepted(model, clients):
    state = {n: p.detach() for n, p in clients[0].named_parameters()}
    NeuronProvenance(model, [state, *clients[1:]], [1, 2, 3]).attribute(X)


def test_client_not_a_model(model, clients):
    with pytest.raises(ProvenanceInputError, match="client '1' must be an nn.Module"):
        NeuronProvenance(model, [clients[0], 42, clients[2]], [1, 2, 3])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_client_parameter(model, clients, bad: float):
    with torch.no_grad():
        clients[1].fc.weight[0, 0] = bad
    with pytest.raises(ProvenanceInputError, match="client 'b'.*'fc.weight'"):
        NeuronProvenance(model, clients, [1, 2, 3], ["a", "b", "c"])


def test_non_finite_global_parameter(model, clients):
    with torch.no_grad():
        model.conv.bias[1] = math.inf
    with pytest.raises(ProvenanceInputError, match="global model.*'conv.bias'"):
        NeuronProvenance(model, clients, [1, 2, 3])


def test_no_clients(model):
    with pytest.raises(ProvenanceInputError, match="at least one client"):
        NeuronProvenance(model, [], [])


def test_duplicate_client_ids(model, clients):
    with pytest.raises(ProvenanceInputError, match="duplicate client id 'x'"):
        NeuronProvenance(model, clients, [1, 2, 3], ["x", "y", "x"])


def test_client_ids_length(model, clients):
    with pytest.raises(ProvenanceInputError, match="client_ids has length 2"):
        NeuronProvenance(model, clients, [1, 2, 3], ["x", "y"])


# -------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    ("weights", "pattern"),
    [
        ([1, 0, 3], "weight of client '1' must be positive"),
        ([1, 2, -3], "weight of client '2' must be positive"),
        ([math.nan, 2, 3], "weight of client '0' must be positive and finite"),
        ([1, math.inf, 3], "weight of client '1' must be positive and finite"),
        ([1, 2], "client_weights has length 2 but there are 3 clients"),
        ([1, 2, 3, 4], "client_weights has length 4"),
        ([1, "2", 3], "weight of client '1' is not a number"),
        (None, "client_weights are required"),
    ],
)
def test_bad_weights(model, clients, weights, pattern: str):
    with pytest.raises(ProvenanceInputError, match=pattern):
        NeuronProvenance(model, clients, weights)


# --------------------------------------------------------------------- models
def test_model_without_traced_layers():
    model = NoTracedLayers()
    with pytest.raises(ProvenanceInputError, match="no traced layers"):
        NeuronProvenance(model, [copy.deepcopy(model)], [1])


def test_layer_called_twice_is_rejected():
    model = SharedLayer()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    with pytest.raises(ProvenanceInputError, match="'fc' is called more than once"):
        engine.attribute(torch.randn(2, 4))


def test_unsupported_padding_mode():
    model = SmallCNN(padding_mode="reflect")
    with pytest.raises(ProvenanceInputError, match="'conv'.*padding_mode='reflect'"):
        NeuronProvenance(model, [copy.deepcopy(model)], [1])


def test_output_without_logits():
    model = ListOutput()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    with pytest.raises(ProvenanceInputError, match="no logits tensor"):
        engine.attribute(torch.randn(2, 4))


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5])
def test_bad_chunk_size(model, clients, chunk_size):
    with pytest.raises(ProvenanceInputError, match="chunk_size"):
        NeuronProvenance(model, clients, [1, 2, 3], chunk_size=chunk_size)


# --------------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    ("inputs", "pattern"),
    [
        (torch.randn(0, 3, 8, 8), "empty batch"),
        (torch.randint(0, 5, (2, 3, 8, 8)), r"non-floating dtype torch.int64"),
        (torch.randn(2, 3, 8, 8, dtype=torch.float64), "dtype torch.float64"),
        (torch.randn(2, 5, 8, 8), r"Tensor\(2, 5, 8, 8\)"),
        (torch.randn(2, 8, 8), r"Tensor\(2, 8, 8\)"),
        (torch.tensor(1.0), "batch dimension"),
        ([1, 2, 3], "Tensor or a Mapping"),
        ({"x": torch.randn(2, 3), "y": torch.randn(3, 3)}, "different batch sizes"),
        ({}, "inputs mapping is empty"),
    ],
)
def test_bad_inputs(model, clients, inputs, pattern: str):
    engine = NeuronProvenance(model, clients, [1, 2, 3])
    with pytest.raises(ProvenanceInputError, match=pattern):
        engine.attribute(inputs)


def test_single_exception_class_is_a_value_error():
    assert issubclass(ProvenanceInputError, ValueError)


def test_no_flower_import():
    code = (
        "import sys, tracefl.provenance; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'flwr'], 'flwr'; "
        "assert 'transformers' not in sys.modules, 'transformers'"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
