"""Fed-Influence, client side: settings, per-sample gradient sampler, payload, cost."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.fedinfluence_fixtures import TinyNet, sgd_settings, tiny_data
from tracefl.fedinfluence import (
    FedInfluenceConfigError,
    FedInfluenceSettings,
    GradientPayload,
    GradientSampler,
    LocalSGD,
    PayloadError,
    check_settings,
    default_layers,
    estimate_cost,
    local_iterations,
    per_sample_gradients,
    tracked_parameters,
)
from tracefl.model import LeNet
from tracefl.train import train

CPU = torch.device("cpu")


def literal_gradients(model: nn.Module, names, state, x, y) -> torch.Tensor:
    """(B, p) per-sample gradients, one autograd call per sample, in eval-free mode."""
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    params = dict(m.named_parameters())
    rows = []
    for b in range(len(y)):
        loss = nn.functional.cross_entropy(m(x[b : b + 1]), y[b : b + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_per_sample_gradients_match_a_literal_loop() -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()  # deterministic (no dropout) for the literal oracle
    data = tiny_data(0, 6)
    names = tracked_parameters(model, ("features.0", "classifier.4"))
    grads = per_sample_gradients(model, names, data.features, data.labels)
    got = torch.cat([grads[n].reshape(6, -1) for n in names], dim=1)
    want = literal_gradients(model, names, model.state_dict(), *data[:])
    assert torch.allclose(got, want, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("num_samples", [3, 8])
def test_sampler_draws_gradients_at_the_pre_step_weights(num_samples: int) -> None:
    torch.manual_seed(1)
    model = TinyNet()
    model.classifier[3].p = 0.0  # keep the oracle deterministic
    data = tiny_data(1, 21)  # batches of 8, 8, 5
    settings = FedInfluenceSettings(("features.0", "classifier.4"), num_samples)
    sgd = LocalSGD(lr=0.2, momentum=0.5)
    sampler = GradientSampler(model, settings, sgd, seed=3)
    seen = []

    def record(m: nn.Module, x, y, i: int) -> None:
        seen.append((copy.deepcopy(m.state_dict()), x.clone(), y.clone()))
        sampler(m, x, y, i)

    train(model, data, sgd_settings(sgd, epochs=2), CPU, seed=5, on_step=record)
    payload = sampler.payload()
    names = sampler.names
    assert payload.num_iterations == len(seen) == 6
    assert payload.sgd == sgd
    for i, (state, x, y) in enumerate(seen):
        want = literal_gradients(model, names, state, x, y)
        rows = torch.cat([payload.iteration(n, i) for n in names], dim=1)
        assert len(rows) == min(num_samples, len(y))
        matched = set()
        for row in rows:  # every drawn row is the gradient of a distinct sample
            dist = (want - row).abs().amax(dim=1)
            best = int(dist.argmin())
            assert dist[best] < 1e-5
            matched.add(best)
        assert len(matched) == len(rows)


def test_training_is_bitwise_the_same_with_and_without_the_sampler() -> None:
    data = tiny_data(2, 20)
    sgd = LocalSGD(lr=0.1, momentum=0.9, weight_decay=1e-3)
    settings = FedInfluenceSettings(("classifier.1",), num_samples=4)
    torch.manual_seed(3)
    start = TinyNet()  # has dropout: the sampler's vmap must not consume the RNG
    plain, sampled = copy.deepcopy(start), copy.deepcopy(start)
    torch.manual_seed(9)
    loss_plain = train(plain, data, sgd_settings(sgd), CPU, seed=4)
    torch.manual_seed(9)
    sampler = GradientSampler(sampled, settings, sgd, seed=0)
    loss_sampled = train(sampled, data, sgd_settings(sgd), CPU, seed=4, on_step=sampler)
    assert loss_plain == loss_sampled
    for key, value in plain.state_dict().items():
        assert torch.equal(value, sampled.state_dict()[key]), key
    assert sampler.payload().num_rows == 4 * 3


def test_payload_round_trips_and_counts_its_bytes() -> None:
    torch.manual_seed(4)
    model = TinyNet()
    sgd = LocalSGD(0.05, 0.9, 1e-4, 0.01)
    settings = FedInfluenceSettings(("classifier.4",), num_samples=5)
    sampler = GradientSampler(model, settings, sgd, seed=1)
    train(model, tiny_data(3, 24), sgd_settings(sgd), CPU, seed=0, on_step=sampler)
    payload = sampler.payload()
    tensors = payload.to_tensors()
    assert set(tensors) == {
        "grad.classifier.4.weight",
        "grad.classifier.4.bias",
        "offsets",
        "sgd",
        "seconds",
    }
    assert tensors["grad.classifier.4.weight"].shape == (15, 18)
    assert tensors["offsets"].tolist() == [0, 5, 10, 15]
    back = GradientPayload.from_tensors(tensors)
    wire = payload.to_bytes()
    assert payload.nbytes < len(wire) < payload.nbytes + 4096
    again = GradientPayload.from_bytes(wire)
    assert again.sgd == sgd and torch.equal(again.offsets, payload.offsets)
    assert torch.equal(
        again.grads["classifier.4.weight"], tensors["grad.classifier.4.weight"]
    )
    assert back.sgd == sgd and back.seconds == payload.seconds > 0
    assert torch.equal(
        back.grads["classifier.4.bias"], payload.grads["classifier.4.bias"]
    )
    m = payload.num_iterations
    assert payload.nbytes == 4 * 15 * (18 + 3) + 8 * (m + 6)
    cost = estimate_cost(model, settings, iterations=m, num_clients=4, participants=2)
    assert cost.payload_bytes == payload.nbytes  # exact when batches hold >= N_s
    assert cost.tracked_entries == 21


def test_payload_rejects_malformed_tensors() -> None:
    good = {
        "grad.w": torch.zeros(4, 3),
        "offsets": torch.tensor([0, 2, 4]),
        "sgd": torch.tensor([0.1, 0.0, 0.0, 0.0], dtype=torch.float64),
        "seconds": torch.tensor(0.0, dtype=torch.float64),
    }
    GradientPayload.from_tensors(good)
    for change, message in [
        ({"offsets": torch.tensor([0, 2, 5])}, r"shape \(5, numel\)"),
        ({"offsets": torch.tensor([0, 4, 4])}, "increase"),
        ({"grad.w": torch.zeros(4, 3, dtype=torch.float64)}, "float32"),
        ({"grad.w": torch.full((4, 3), float("nan"))}, "NaN"),
        ({"extra": torch.zeros(1)}, "unknown"),
    ]:
        with pytest.raises(PayloadError, match=message):
            GradientPayload.from_tensors({**good, **change})
    with pytest.raises(FedInfluenceConfigError, match="lr"):
        GradientPayload.from_tensors({**good, "sgd": torch.zeros(4).double()})


def test_lenet_defaults_and_their_estimated_cost() -> None:
    lenet = LeNet(1, 28, 10)
    assert default_layers(lenet) == ("classifier.5",)
    settings = FedInfluenceSettings(default_layers(lenet))
    assert settings.num_samples == 16 and settings.lwet
    # MNIST, 2 epochs of 2048 samples in batches of 32 (TraceFL's defaults).
    m = local_iterations(2048, 32, 2)
    assert m == 128
    cost = check_settings(
        lenet, settings, iterations=m, num_clients=10, participants=10
    )
    assert cost.tracked_entries == 850 and cost.state_entries == 61706
    assert cost.payload_bytes == 4 * 128 * 16 * 850 + 8 * 134
    assert cost.server_peak_bytes < settings.memory_budget_bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ("classifier.5",), "num_samples": 0}, "num_samples"),
        ({"layers": ("classifier.5",), "num_samples": -3}, "num_samples"),
        ({"layers": ()}, "at least one"),
        ({"layers": "classifier.5"}, "tuple"),
        ({"layers": ("fc", "fc")}, "twice"),
        ({"layers": ("classifier.5",), "memory_budget_bytes": 0}, "memory_budget"),
    ],
)
def test_bad_settings_fail_with_the_setting_named(kwargs, message: str) -> None:
    with pytest.raises(FedInfluenceConfigError, match=message):
        FedInfluenceSettings(**kwargs)


def test_bad_layers_fail_before_training() -> None:
    lenet = LeNet(1, 28, 10)
    sgd = LocalSGD(0.01)
    with pytest.raises(FedInfluenceConfigError, match="no module 'fc'.*classifier.5"):
        GradientSampler(lenet, FedInfluenceSettings(("fc",)), sgd, seed=0)
    with pytest.raises(FedInfluenceConfigError, match="no parameters"):
        tracked_parameters(lenet, ("classifier.4",))  # a ReLU
    with pytest.raises(FedInfluenceConfigError, match="chosen by both"):
        tracked_parameters(lenet, ("classifier", "classifier.5"))
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(FedInfluenceConfigError, match="'1' is a BatchNorm1d"):
        tracked_parameters(bn, ("2",))
    with pytest.raises(FedInfluenceConfigError, match="momentum"):
        LocalSGD(0.1, momentum=1.0)
    with pytest.raises(FedInfluenceConfigError, match="lr"):
        LocalSGD(0.0)


def test_a_model_too_large_for_the_budget_fails_before_training() -> None:
    lenet = LeNet(1, 28, 10)
    settings = FedInfluenceSettings(("",), num_samples=16)  # the whole model
    with pytest.raises(FedInfluenceConfigError, match="memory_budget_bytes.*payload"):
        check_settings(lenet, settings, iterations=128, num_clients=10, participants=10)
    small = FedInfluenceSettings(("classifier.5",), memory_budget_bytes=2**20)
    with pytest.raises(FedInfluenceConfigError, match="server's state"):
        check_settings(lenet, small, iterations=8, num_clients=100, participants=10)


def test_the_sampler_enforces_the_budget_while_training() -> None:
    model = TinyNet()
    sgd = LocalSGD(0.1)
    # 4 rows x 21 entries x 4 bytes = 336 bytes per iteration.
    settings = FedInfluenceSettings(("classifier.4",), 4, memory_budget_bytes=800)
    sampler = GradientSampler(model, settings, sgd, seed=0)
    with pytest.raises(FedInfluenceConfigError, match="at local iteration 2"):
        train(model, tiny_data(0, 40), sgd_settings(sgd), CPU, seed=0, on_step=sampler)


def test_sampler_rejects_iterations_out_of_order() -> None:
    model = TinyNet()
    sampler = GradientSampler(
        model, FedInfluenceSettings(("classifier.4",)), LocalSGD(0.1), seed=0
    )
    data = tiny_data(0, 4)
    with pytest.raises(ValueError, match="expected 0"):
        sampler(model, data.features, data.labels, 1)
    with pytest.raises(ValueError, match="no local iteration"):
        sampler.payload()


class TokenNet(nn.Module):
    """A text-like model called as ``model(input_ids=..., attention_mask=...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return self.head(pooled)


def test_per_sample_gradients_of_a_dict_input_model() -> None:
    torch.manual_seed(2)
    model = TokenNet()
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, 11, (5, 6), generator=gen),
        "attention_mask": (torch.rand(5, 6, generator=gen) > 0.3).long(),
    }
    inputs["attention_mask"][:, 0] = 1
    labels = torch.randint(0, 3, (5,), generator=gen)
    names = tracked_parameters(model, ("embed", "head"))
    grads = per_sample_gradients(model, names, inputs, labels)
    for b in range(5):
        one = {k: v[b : b + 1] for k, v in inputs.items()}
        loss = nn.functional.cross_entropy(model(**one), labels[b : b + 1])
        want = torch.autograd.grad(
            loss, [dict(model.named_parameters())[n] for n in names]
        )
        for n, w in zip(names, want, strict=True):
            assert torch.allclose(grads[n][b], w, atol=1e-6), (n, b)
