"""Tests for the FedDebug comparator (tracefl.feddebug)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

from tracefl.feddebug import (
    FedDebugResult,
    _active_neurons,
    _leave_one_out_suspects,
    _scaled_layer,
    feddebug_applicable,
    localize_faulty_clients,
)

INPUT_SHAPE = (1, 12, 12)
IDS = [f"c{k}" for k in range(5)]


def _cnn() -> nn.Sequential:
    """Conv-ReLU-pool-linear CNN for (1, 12, 12) inputs: 6 + 10 = 16 neurons."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 10),
    )


def _clients(n_clients: int, faulty: set[int], seed: int = 0) -> list[nn.Module]:
    """Benign clients = base model + 1e-3 noise; faulty = re-drawn weights x5."""
    torch.manual_seed(seed)
    base = _cnn()
    models: list[nn.Module] = []
    for k in range(n_clients):
        model = _cnn()
        model.load_state_dict(base.state_dict())
        gen = torch.Generator().manual_seed(1000 * seed + k)
        with torch.no_grad():
            for p in model.parameters():
                noise = torch.randn(p.shape, generator=gen)
                if k in faulty:
                    p.copy_(5.0 * noise)
                else:
                    p.add_(1e-3 * noise)
        models.append(model)
    return models


def _all_hooks_empty(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("faulty", range(5))
def test_names_the_single_faulty_client(faulty: int) -> None:
    result = localize_faulty_clients(_clients(5, {faulty}), IDS, INPUT_SHAPE)
    assert isinstance(result, FedDebugResult)
    assert result.faulty_client_ids == (IDS[faulty],)
    assert len(result.per_input_suspects) == 10
    assert all(len(row) == 1 for row in result.per_input_suspects)
    assert list(result.vote_counts) == IDS
    assert sum(result.vote_counts.values()) == 10
    assert max(result.vote_counts, key=result.vote_counts.__getitem__) == IDS[faulty]
    assert result.seconds > 0.0


def test_deterministic_for_fixed_seed() -> None:
    models = _clients(5, {2})
    first = localize_faulty_clients(models, IDS, INPUT_SHAPE, seed=7)
    second = localize_faulty_clients(models, IDS, INPUT_SHAPE, seed=7)
    assert first.per_input_suspects == second.per_input_suspects
    assert first.vote_counts == second.vote_counts
    assert first.faulty_client_ids == second.faulty_client_ids == ("c2",)


def test_other_seeds_same_answer_in_constructed_case() -> None:
    models = _clients(5, {3})
    answers = {
        localize_faulty_clients(models, IDS, INPUT_SHAPE, seed=s).faulty_client_ids
        for s in range(4)
    }
    assert answers == {("c3",)}


def test_seed_changes_inputs_and_per_input_suspects() -> None:
    # Five independently initialised models: no clear outlier, so the suspects
    # depend on the random inputs, i.e. on the seed.
    torch.manual_seed(0)
    models = [_cnn() for _ in range(5)]
    runs = [localize_faulty_clients(models, IDS, INPUT_SHAPE, seed=s) for s in range(3)]
    assert len({r.per_input_suspects for r in runs}) > 1
    again = localize_faulty_clients(models, IDS, INPUT_SHAPE, seed=0)
    assert again.per_input_suspects == runs[0].per_input_suspects


def test_two_faulty_clients_found() -> None:
    for seed in range(3):
        result = localize_faulty_clients(
            _clients(5, {1, 3}, seed=seed), IDS, INPUT_SHAPE, num_faulty=2
        )
        assert set(result.faulty_client_ids) == {"c1", "c3"}
        assert len(result.faulty_client_ids) == 2
        assert all(len(set(row)) == 2 for row in result.per_input_suspects)
        assert sum(result.vote_counts.values()) == 2 * 10


def _brute_force(active: torch.Tensor, num_faulty: int) -> list[list[int]]:
    """Reference: explicit set intersections over leave-one-out subsets."""
    out = []
    for per_input in active.tolist():
        sets = [{n for n, a in enumerate(row) if a} for row in per_input]
        remaining = list(range(len(sets)))
        found = []
        for _ in range(num_faulty):
            best, best_count = -1, -1
            for k in remaining:  # ascending: ties keep the lowest index
                others = [sets[j] for j in remaining if j != k]
                count = len(set.intersection(*others))
                if count > best_count:
                    best, best_count = k, count
            found.append(best)
            remaining.remove(best)
        out.append(found)
    return out


@pytest.mark.parametrize(("n_clients", "num_faulty"), [(2, 1), (4, 1), (6, 3)])
def test_vectorised_search_matches_brute_force(n_clients: int, num_faulty: int) -> None:
    gen = torch.Generator().manual_seed(n_clients)
    for density in (0.2, 0.5, 0.9):
        active = torch.rand((25, n_clients, 12), generator=gen) < density
        got = _leave_one_out_suspects(active, num_faulty).tolist()
        assert got == _brute_force(active, num_faulty)


def test_ties_go_to_lowest_index_and_vote_ties_to_client_order() -> None:
    # Identical models: every leave-one-out subset ties -> always client 0,
    # then client 1 for the second suspect.
    base = _clients(4, set())[0]
    models = [base, base, base, base]
    result = localize_faulty_clients(
        models, ["w", "x", "y", "z"], INPUT_SHAPE, num_faulty=2, num_inputs=3
    )
    assert result.per_input_suspects == (("w", "x"),) * 3
    assert result.faulty_client_ids == ("w", "x")
    assert result.vote_counts == {"w": 3, "x": 3, "y": 0, "z": 0}


def test_neuron_layout_and_constant_layer_guard() -> None:
    model = _cnn()
    inputs = torch.rand((4, *INPUT_SHAPE))
    active = _active_neurons(model, inputs, torch.device("cpu"), 0.003, 0)
    assert active.shape == (4, 6 + 10)  # one neuron per channel / feature
    assert active.dtype == torch.bool
    with torch.no_grad():  # constant Linear output: max == min -> nothing active
        model[4].weight.zero_()
        model[4].bias.fill_(1.0)
    active = _active_neurons(model, inputs, torch.device("cpu"), 0.003, 0)
    assert not active[:, 6:].any()
    assert active[:, :6].any()


def test_scaled_layer_relu_channel_mean_and_min_max() -> None:
    conv = torch.tensor(
        [[[[4.0, 0.0], [0.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]], [[-5, -5], [-5, 3.0]]]]
    )  # (1, 3, 2, 2): ReLU then channel means 1, 2, 0.75
    got = _scaled_layer(conv, 1)
    assert torch.allclose(got, torch.tensor([[0.2, 1.0, 0.0]]))
    linear = torch.tensor([[-1.0, 1.0, 3.0], [-2.0, -1.0, -3.0]])  # (2, 3)
    got = _scaled_layer(linear, 2)  # row 2 is all zero after ReLU: guarded
    assert torch.allclose(got, torch.tensor([[0.0, 1 / 3, 1.0], [0.0, 0.0, 0.0]]))


def test_models_not_modified() -> None:
    models = _clients(3, {0})
    models[1].train()
    models[2].eval()
    models[2][0].train()  # mixed per-module flags must be restored exactly
    flags = [[m.training for m in model.modules()] for model in models]
    states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    localize_faulty_clients(models, ["a", "b", "c"], INPUT_SHAPE)
    for model, flag, state in zip(models, flags, states, strict=True):
        assert [m.training for m in model.modules()] == flag
        assert _all_hooks_empty(model)
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key])


class _Boom(nn.Module):
    """Fails after a hooked layer ran, to test hook cleanup on error."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv(x)
        raise RuntimeError("boom")


def test_hooks_removed_after_exception() -> None:
    models = [_cnn(), _Boom(), _cnn()]
    models[1].train()
    with pytest.raises(RuntimeError, match="boom"):
        localize_faulty_clients(models, ["a", "b", "c"], INPUT_SHAPE)
    for model in models:
        assert _all_hooks_empty(model)
    assert all(m.training for m in models[1].modules())


def test_hooks_removed_after_shape_error() -> None:
    models = _clients(3, set())
    with pytest.raises(RuntimeError):
        localize_faulty_clients(models, ["a", "b", "c"], (1, 20, 20))
    assert all(_all_hooks_empty(m) for m in models)


def _valid_kwargs() -> dict[str, Any]:
    return {
        "client_models": _clients(3, {0}),
        "client_ids": ["a", "b", "c"],
        "input_shape": INPUT_SHAPE,
    }


_INVALID: list[tuple[dict[str, Any], str]] = [
    ({"client_models": [_cnn()], "client_ids": ["a"]}, r"client_models.*\b1\b"),
    ({"client_models": [], "client_ids": []}, r"client_models.*\b0\b"),
    ({"client_models": [_cnn(), "x", _cnn()]}, r"client_models\[1\].*str"),
    (
        {"client_models": [_cnn(), nn.Sequential(nn.ReLU()), _cnn()]},
        r"client_models\[1\]",
    ),
    (
        {
            "client_models": [
                _cnn(),
                _cnn(),
                nn.Sequential(nn.Flatten(), nn.Linear(144, 3)),
            ]
        },
        "client_models",
    ),
    ({"client_ids": ["a", "b"]}, r"client_ids.*\b2\b"),
    ({"client_ids": ["a", "b", "a"]}, r"client_ids.*'a'"),
    ({"input_shape": ()}, r"input_shape.*\(\)"),
    ({"input_shape": (1, 0, 12)}, r"input_shape.*\(1, 0, 12\)"),
    ({"num_faulty": 0}, r"num_faulty.*\b0\b"),
    ({"num_faulty": 3}, r"num_faulty.*\b3\b"),
    ({"num_faulty": 1.0}, r"num_faulty.*1\.0"),
    ({"num_inputs": 0}, r"num_inputs.*\b0\b"),
    ({"num_inputs": -2}, r"num_inputs.*-2"),
    ({"na_threshold": -0.1}, r"na_threshold.*-0\.1"),
    ({"na_threshold": 1.0}, r"na_threshold.*1\.0"),
]


@pytest.mark.parametrize(("override", "pattern"), _INVALID)
def test_invalid_arguments_raise(override: dict[str, Any], pattern: str) -> None:
    kwargs = _valid_kwargs() | override
    with pytest.raises(ValueError, match=pattern):
        localize_faulty_clients(**kwargs)
    for model in kwargs["client_models"]:
        if isinstance(model, nn.Module):
            assert _all_hooks_empty(model)


def test_valid_kwargs_baseline_runs() -> None:
    result = localize_faulty_clients(**_valid_kwargs())
    assert result.faulty_client_ids == ("a",)


class _TextModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).mean(dim=1))


def test_applicability() -> None:
    assert feddebug_applicable(_cnn())
    assert not feddebug_applicable(_TextModel())
    assert not feddebug_applicable(nn.Sequential(nn.EmbeddingBag(10, 4)))
    assert not feddebug_applicable(nn.Sequential(nn.ReLU()))


def test_ids_are_independent_of_order_semantics() -> None:
    # Permuting clients permutes the answer: localization follows the model.
    models = _clients(5, {0})
    order = [4, 2, 0, 1, 3]
    ids = [IDS[k] for k in order]
    result = localize_faulty_clients([models[k] for k in order], ids, INPUT_SHAPE)
    assert result.faulty_client_ids == ("c0",)


def test_all_combinations_of_two_faulty() -> None:
    for pair in itertools.combinations(range(4), 2):
        result = localize_faulty_clients(
            _clients(4, set(pair), seed=2), IDS[:4], INPUT_SHAPE, num_faulty=2
        )
        assert set(result.faulty_client_ids) == {IDS[k] for k in pair}
