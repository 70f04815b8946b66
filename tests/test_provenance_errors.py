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
class NoTracedLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0][-1] * self.scale


def test_model_without_traced_layers():
    model = NoTracedLayers()
    with pytest.raises(ProvenanceInputError, match="no traced layers in the 'all'"):
        NeuronProvenance(model, [copy.deepcopy(model)], [1])
    paper = SmallCNN()
    paper.conv = nn.Conv3d(3, 4, 1)
    NeuronProvenance(paper, [copy.deepcopy(paper)], [1], layers="paper")  # has fc


def test_output_without_logits():
    model = ListOutput()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    with pytest.raises(ProvenanceInputError, match="no logits tensor"):
        engine.attribute(torch.randn(2, 4))


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
@pytest.mark.parametrize("name", ["chunk_size", "client_chunk_size"])
def test_bad_chunk_size(model, clients, name: str, chunk_size):
    with pytest.raises(ProvenanceInputError, match=f"^{name} must be"):
        NeuronProvenance(model, clients, [1, 2, 3], **{name: chunk_size})


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "high", None])
def test_bad_warning_threshold(model, clients, threshold):
    with pytest.raises(ProvenanceInputError, match="untraced_warning_threshold"):
        NeuronProvenance(
            model, clients, [1, 2, 3], untraced_warning_threshold=threshold
        )


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


# ----------------------------------------------------------- batch layouts
def _pristine(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        for m in model.modules()
    )


class MixesInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :3] + self.fc(x.mean(0))  # one input's output depends on others


class Pairwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x[:, None] + x[None]).mean(1)  # (B, B, 4) input


class BatchSizeBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 2:  # the probe pass has two inputs
            x = self.extra(x)
        return self.fc(x)


@pytest.mark.parametrize(
    ("cls", "pattern"),
    [
        (MixesInputs, r"argument 0 of layer 'fc'.* its values do \(it mixes inputs"),
        (Pairwise, r"argument 0 of layer 'fc': dimensions \[0, 1\] all change"),
        (BatchSizeBranch, "control flow must not depend on the batch size"),
    ],
)
def test_undeterminable_layout_names_the_layer(cls, pattern: str):
    torch.manual_seed(0)
    model = cls()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    with pytest.raises(ProvenanceInputError, match=pattern):
        engine.attribute(torch.randn(3, 4))
    assert _pristine(model)


def test_identical_inputs_leave_a_flattened_order_undetermined():
    from tests.provenance_models import FlattenedNet

    torch.manual_seed(0)
    model = FlattenedNet()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    same = torch.randn(1, 1, 4).expand(3, 4, 4).contiguous()  # every row equal
    with pytest.raises(ProvenanceInputError, match="layer 'major'.*both of the input"):
        engine.attribute(same)
    engine.attribute(torch.randn(1, 4, 4).expand(3, 4, 4))  # equal inputs are fine


# ------------------------------------------------ exceptions in the forward
class BoomError(Exception):
    pass


class Faulty(nn.Module):
    def __init__(self, error: Exception | None) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: Tensor) -> Tensor:
        if self.error is not None:
            raise self.error
        return x


class WithFaulty(nn.Module):
    def __init__(self, error: Exception | None, fail_batch: int | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.block = nn.Sequential(nn.Identity(), Faulty(error))
        self.fail_batch = fail_batch

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.fail_batch is not None and x.shape[0] != self.fail_batch:
            return h
        return self.block(h)


@pytest.mark.parametrize(
    "error", [KeyError("k"), AssertionError("bad"), ZeroDivisionError(), BoomError("x")]
)
def test_exception_in_forward_names_the_module(error: Exception):
    model = WithFaulty(error).train()
    model.fc.bias.requires_grad_(False)
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    kind = type(error).__name__
    with pytest.raises(
        ProvenanceInputError, match=rf"in module 'block\.1' \(Faulty\): {kind}"
    ) as info:
        engine.attribute(torch.randn(2, 4))
    assert info.value.__cause__ is error
    assert _pristine(model)
    assert model.training and not model.fc.bias.requires_grad


def test_exception_in_the_probe_pass_is_wrapped():
    model = WithFaulty(BoomError("three"), fail_batch=3)  # the probe of B=2 has 3
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1])
    with pytest.raises(ProvenanceInputError, match=r"Tensor\(3, 4\).*BoomError: three"):
        engine.attribute(torch.randn(2, 4))
    assert _pristine(model)


class Squeezing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.head = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, 5, 4)
        return self.head(self.fc(x).squeeze())  # a batch of one would lose its dim


def test_a_model_squeezing_its_batch_is_probed_with_two_inputs():
    torch.manual_seed(0)
    model = Squeezing().double()
    clients = [copy.deepcopy(model)]
    x = torch.randn(4, 5, 4, dtype=torch.float64)
    result = NeuronProvenance(model, clients, [1]).attribute(x)
    pairs = [
        NeuronProvenance(model, clients, [1]).attribute(x[i : i + 2]) for i in (0, 2)
    ]
    torch.testing.assert_close(result.scores, torch.cat([r.scores for r in pairs]))


@pytest.mark.parametrize("layers", ["all", "paper"])
def test_batchnorm_without_running_statistics_is_refused(layers: str):
    model = SmallCNN()
    model.bn = nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(ProvenanceInputError, match="BatchNorm2d 'bn' has no running"):
        NeuronProvenance(model, [copy.deepcopy(model)], [1], layers=layers)


def _weight_normed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)))


def test_missing_raw_tensor_of_a_parametrised_weight():
    model = _weight_normed()
    state = dict(model.state_dict())
    del state["0.parametrizations.weight.original1"]
    pattern = r"client '0' is missing parameter '0\.parametrizations\.weight\.orig"
    with pytest.raises(ProvenanceInputError, match=pattern):
        NeuronProvenance(model, [state], [1])


def test_non_finite_effective_weight_names_client_and_parameter():
    model = _weight_normed()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["0.parametrizations.weight.original1"][0] = 0.0  # norm 0: NaN weight row
    with pytest.raises(
        ProvenanceInputError, match=r"client 'a' \(effective weight\).*'0\.weight'"
    ):
        NeuronProvenance(model, [state], [1], ["a"])
