"""``target=``, ``objective=``, ``layers=`` and client parameter sets that are not
models (updates, share-weighted parameters, a single pseudo-client)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from tests.provenance_models import model_setup
from tests.provenance_oracle import oracle_scores
from tracefl.provenance import NeuronProvenance, ProvenanceInputError

WEIGHTS = [30.0, 10.0, 60.0]
OBJECTIVES = ["logit", "log_softmax", "margin"]


def _assert_close(scores: Tensor, oracle: Tensor) -> None:
    atol = 1e-9 * max(1.0, float(oracle.abs().max()))
    torch.testing.assert_close(scores, oracle, rtol=1e-7, atol=atol)


def _targets(kind: str, batch: int, num_classes: int) -> int | Tensor | None:
    if kind == "predicted":
        return None
    if kind == "int":
        return num_classes - 1
    return torch.arange(batch) % num_classes  # e.g. true labels


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("kind", ["predicted", "int", "tensor"])
@pytest.mark.parametrize("name", ["lenet", "bert"])
def test_target_and_objective_equal_oracle(name: str, kind: str, objective: str):
    model, clients, inputs = model_setup(name)
    batch = 3
    num_classes = 10 if name == "lenet" else 3
    target = _targets(kind, batch, num_classes)
    engine = NeuronProvenance(model, clients, WEIGHTS, objective=objective)
    result = engine.attribute(inputs, target=target)
    oracle, _ = oracle_scores(
        model,
        clients,
        WEIGHTS,
        inputs,
        target=target,
        objective=objective,
        layers="all",
    )
    _assert_close(result.scores, oracle)
    assert result.objective == objective
    assert result.targets.dtype == torch.int64 and result.targets.shape == (batch,)
    if target is None:
        assert torch.equal(result.targets, result.predicted_labels)
    else:
        assert torch.equal(result.targets, torch.as_tensor(target).expand(batch))


def test_objectives_differ_and_predictions_do_not():
    model, clients, inputs = model_setup("lenet")
    results = {
        o: NeuronProvenance(model, clients, WEIGHTS, objective=o).attribute(inputs)
        for o in OBJECTIVES
    }
    assert not torch.allclose(results["logit"].scores, results["margin"].scores)
    assert not torch.allclose(results["logit"].scores, results["log_softmax"].scores)
    for r in results.values():
        assert torch.equal(r.predicted_labels, results["logit"].predicted_labels)


def test_target_tensor_is_chunked_with_the_inputs():
    model, clients, inputs = model_setup("lenet")
    target = torch.tensor([4, 0, 7])
    whole = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs, target=target)
    chunked = NeuronProvenance(model, clients, WEIGHTS, chunk_size=2).attribute(
        inputs, target=target
    )
    torch.testing.assert_close(chunked.scores, whole.scores, rtol=1e-12, atol=1e-12)
    assert torch.equal(chunked.targets, target)


def test_int32_target_tensor_is_accepted():
    model, clients, inputs = model_setup("lenet")
    engine = NeuronProvenance(model, clients, WEIGHTS)
    r64 = engine.attribute(inputs, target=torch.tensor([1, 2, 3]))
    r32 = engine.attribute(inputs, target=torch.tensor([1, 2, 3], dtype=torch.int32))
    assert torch.equal(r64.scores, r32.scores)
    assert r32.targets.dtype == torch.int64


@pytest.mark.parametrize(
    ("target", "pattern"),
    [
        (10, r"target 10 of input 0 is out of range .* 10 classes \(0\.\.9\)"),
        (-1, "target -1 of input 0 is out of range"),
        (torch.tensor([0, 11, 2]), "target 11 of input 1 is out of range"),
        (torch.tensor([0.0, 1.0, 2.0]), "integer tensor.*torch.float32"),
        (torch.tensor([True, False, True]), "integer tensor.*torch.bool"),
        (torch.tensor([1, 2]), r"shape \(3,\).*got \(2,\)"),
        (torch.tensor([[1, 2, 3]]), r"shape \(3,\).*got \(1, 3\)"),
        (True, "target must be None.*got bool"),
        ("cat", "target must be None.*got str"),
        (1.5, "target must be None.*got float"),
    ],
)
def test_bad_target(target, pattern: str):
    model, clients, inputs = model_setup("lenet")
    engine = NeuronProvenance(model, clients, WEIGHTS)
    with pytest.raises(ProvenanceInputError, match=pattern):
        engine.attribute(inputs, target=target)


@pytest.mark.parametrize("objective", ["softmax", "", None, 3])
def test_bad_objective(objective):
    model, clients, _ = model_setup("lenet")
    with pytest.raises(ProvenanceInputError, match="objective=.* is not one of"):
        NeuronProvenance(model, clients, WEIGHTS, objective=objective)


def test_margin_needs_two_classes():
    model = nn.Linear(4, 1).double()
    engine = NeuronProvenance(model, [copy.deepcopy(model)], [1.0], objective="margin")
    with pytest.raises(ProvenanceInputError, match="at least 2 classes"):
        engine.attribute(torch.randn(2, 4, dtype=torch.float64))


# ------------------------------------------------------------- layer sets
@pytest.mark.parametrize("layers", ["paper", "all"])
def test_layer_set_is_reported(layers: str):
    model, clients, inputs = model_setup("lenet")
    result = NeuronProvenance(model, clients, WEIGHTS, layers=layers).attribute(inputs)
    assert result.layer_set == layers


@pytest.mark.parametrize("layers", ["everything", "", ("Linear",), ()])
def test_bad_layer_set(layers):
    model, clients, _ = model_setup("lenet")
    with pytest.raises(ProvenanceInputError, match="layers"):
        NeuronProvenance(model, clients, WEIGHTS, layers=layers)


@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_paper_layer_set_equals_literal_oracle(name: str):
    """The paper's configuration reproduces the original engine exactly."""
    model, clients, inputs = model_setup(name)
    engine = NeuronProvenance(
        model, clients, WEIGHTS, layers="paper", scale_by_data_share=True
    )
    result = engine.attribute(inputs)
    oracle, names = oracle_scores(
        model, clients, WEIGHTS, inputs, scale_by_data_share=True
    )
    _assert_close(result.scores, oracle)
    assert list(result.layer_names) == names


# ------------------------------------------------ parameter sets, not models
def _parameters(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_updates_are_attributed_linearly():
    """``T(theta_k - theta_g) = T(theta_k) - T(theta_g)`` (no data share)."""
    model, clients, inputs = model_setup("bert")
    glob = _parameters(model)
    updates = [{n: p - glob[n] for n, p in _parameters(c).items()} for c in clients]
    r_updates = NeuronProvenance(model, updates, WEIGHTS).attribute(inputs)
    r_clients = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    r_global = NeuronProvenance(model, [glob], [1.0]).attribute(inputs)
    expected = r_clients.scores - r_global.scores
    torch.testing.assert_close(r_updates.scores, expected, rtol=1e-9, atol=1e-9)


def test_updates_equal_oracle():
    model, clients, inputs = model_setup("oddconv")
    glob = _parameters(model)
    updates = [{n: p - glob[n] for n, p in _parameters(c).items()} for c in clients]
    result = NeuronProvenance(model, updates, WEIGHTS).attribute(inputs)
    oracle, _ = oracle_scores(model, updates, WEIGHTS, inputs, layers="all")
    _assert_close(result.scores, oracle)


def test_share_weighted_and_residual_parameter_sets():
    """Per-coordinate shares ``A_k * theta_k`` plus a residual pseudo-client."""
    model, clients, inputs = model_setup("lenet")
    gen = torch.Generator().manual_seed(5)
    sets = []
    for c in clients:
        sets.append(
            {
                n: torch.rand(p.shape, generator=gen, dtype=p.dtype) * p
                for n, p in _parameters(c).items()
            }
        )
    glob = _parameters(model)
    residual = {n: glob[n] - sum(s[n] for s in sets) for n in glob}  # may be < 0
    sets.append(residual)
    weights = [1.0] * 4
    result = NeuronProvenance(model, sets, weights).attribute(inputs)
    oracle, _ = oracle_scores(model, sets, weights, inputs, layers="all")
    _assert_close(result.scores, oracle)
    # The terms add up to the global model's own attribution.
    whole = NeuronProvenance(model, [glob], [1.0]).attribute(inputs)
    torch.testing.assert_close(
        result.scores.sum(1), whole.scores[:, 0], rtol=1e-9, atol=1e-9
    )


def test_tiny_values_are_accepted():
    model, clients, inputs = model_setup("lenet")
    tiny = [{n: p * 1e-30 for n, p in _parameters(c).items()} for c in clients]
    result = NeuronProvenance(model, tiny, WEIGHTS).attribute(inputs)
    base = NeuronProvenance(model, clients, WEIGHTS).attribute(inputs)
    torch.testing.assert_close(result.scores, base.scores * 1e-30)


def test_single_client():
    model, clients, inputs = model_setup("lenet")
    result = NeuronProvenance(model, clients[:1], [5.0], ["only"]).attribute(inputs)
    assert result.scores.shape == (3, 1)
    assert torch.equal(result.probs, torch.ones(3, 1, dtype=torch.float64))
    assert result.traced_client_ids == ["only"] * 3
    oracle, _ = oracle_scores(model, clients[:1], [5.0], inputs, layers="all")
    _assert_close(result.scores, oracle)


def test_untraced_parameters_may_be_missing_and_buffers_come_from_global():
    """With the paper's set, BatchNorm is untraced: a client without BatchNorm
    parameters or statistics works, and garbage client statistics are ignored."""
    model, clients, inputs = model_setup("resnet18")
    traced_only = {
        n: p
        for n, p in clients[0].state_dict().items()
        if "bn" not in n and "downsample.1" not in n
    }
    garbage = dict(clients[1].state_dict())
    for n in garbage:
        if n.endswith("running_var"):
            garbage[n] = torch.full_like(garbage[n], 1e6)
    sets = [traced_only, garbage, clients[2]]
    result = NeuronProvenance(model, sets, WEIGHTS, layers="paper").attribute(inputs)
    base = NeuronProvenance(model, clients, WEIGHTS, layers="paper").attribute(inputs)
    torch.testing.assert_close(result.scores, base.scores, rtol=1e-12, atol=1e-12)
