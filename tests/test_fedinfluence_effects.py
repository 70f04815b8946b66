"""Fed-Influence on Loss (FIL, Eq. 6) and the retraining ground-truth helper."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.fedinfluence_fixtures import TinyNet, fedavg_round, tiny_data
from tracefl.fedinfluence import (
    FedInfluence,
    FedInfluenceSettings,
    LocalSGD,
    counterfactual_effects,
)


@pytest.fixture(scope="module")
def two_rounds() -> tuple[FedInfluence, nn.Module, object]:
    torch.manual_seed(0)
    model = TinyNet()
    settings = FedInfluenceSettings(("classifier.1", "classifier.4"), 4)
    data = [tiny_data(i, 12 + i) for i in range(3)]
    estimator = FedInfluence(copy.deepcopy(model), settings)
    sgd = LocalSGD(0.3, momentum=0.5)
    for t, members in ((1, [0, 1, 2]), (2, [0, 2])):
        fused, payloads, model = fedavg_round(model, data, members, settings, sgd, t)
        estimator.update(fused, payloads)
    return estimator, model, tiny_data(99, 10)


def literal_outputs(model: nn.Module, state, data) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) float64 logits and (B,) losses of a copy loaded with ``state``."""
    m = copy.deepcopy(model).double().eval()
    m.load_state_dict({k: v.double() for k, v in state.items()})
    x, y = data[:]
    logits = torch.stack([m(x[b : b + 1].double())[0] for b in range(len(y))])
    losses = torch.stack(
        [
            nn.functional.cross_entropy(logits[b : b + 1], y[b : b + 1])
            for b in range(len(y))
        ]
    )
    return logits, losses


def test_fil_equals_the_loss_of_the_model_without_the_client(two_rounds) -> None:
    estimator, global_model, test = two_rounds
    effect = estimator.influence_on_loss(test.features, test.labels, chunk_size=3)
    assert effect.client_ids == ("c0", "c1", "c2")
    assert effect.loss.shape == effect.logit.shape == (10, 3)
    ref_logits, ref_loss = literal_outputs(
        global_model, global_model.state_dict(), test
    )
    predicted = ref_logits.argmax(1)
    assert torch.equal(effect.predicted_labels, predicted)
    assert torch.allclose(effect.reference_loss, ref_loss, atol=1e-6)
    fip = estimator.parameter_influence()
    for k, c in enumerate(effect.client_ids):
        state = {
            n: v.double() + fip[c][n] for n, v in global_model.state_dict().items()
        }
        logits, loss = literal_outputs(global_model, state, test)
        assert torch.allclose(effect.loss[:, k], loss - ref_loss, atol=1e-6)
        want = logits.gather(1, predicted[:, None])[:, 0]
        want = want - ref_logits.gather(1, predicted[:, None])[:, 0]
        assert torch.allclose(effect.logit[:, k], want, atol=1e-6)
        assert torch.equal(effect.counterfactual_labels[:, k], logits.argmax(1))
    assert torch.allclose(effect.test_loss, effect.loss.mean(0))
    assert torch.equal(effect.responsibility, -effect.logit)
    assert effect.loss.abs().max() > 1e-4  # the estimate is not trivially zero


def test_fil_of_a_small_step_matches_the_directional_derivative(two_rounds) -> None:
    """Finite difference: (L(w + h eps) - L(w)) / h -> grad L(w) . eps as h -> 0."""
    estimator, global_model, test = two_rounds
    reference = {k: v.double() for k, v in global_model.state_dict().items()}
    fip = estimator.parameter_influence()
    m = copy.deepcopy(global_model).double().eval()
    x, y = test[:]
    grads = []
    for b in range(len(y)):
        loss = nn.functional.cross_entropy(m(x[b : b + 1].double()), y[b : b + 1])
        g = torch.autograd.grad(loss, list(m.parameters()))
        grads.append(dict(zip([n for n, _ in m.named_parameters()], g, strict=True)))
    for h in (1e-3, 1e-5):
        scaled = {
            c: {k: reference[k] + h * e[k] for k in reference} for c, e in fip.items()
        }
        effect = counterfactual_effects(global_model, reference, scaled, x, y)
        for k, c in enumerate(effect.client_ids):
            slope = torch.stack(
                [sum((g[n] * fip[c][n]).sum() for n in g) for g in grads]
            )
            err = (effect.loss[:, k] / h - slope).abs().max()
            assert err < 50 * h * max(1.0, float(slope.abs().max())), (h, c, err)


def test_ground_truth_effect_leaves_the_model_untouched() -> None:
    torch.manual_seed(1)
    model = TinyNet().train()
    before = copy.deepcopy(model.state_dict())
    retrained = {
        "a": {k: v + 0.01 for k, v in before.items()},
        "b": {k: v.clone() for k, v in before.items()},
    }
    data = tiny_data(5, 7)
    effect = counterfactual_effects(
        model, before, retrained, data.features, data.labels
    )
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert effect.client_ids == ("a", "b")
    assert torch.equal(effect.loss[:, 1], torch.zeros(7, dtype=torch.float64))
    assert effect.loss[:, 0].abs().min() > 0
    with pytest.raises(ValueError, match="lacks parameter 'classifier.4.bias'"):
        counterfactual_effects(
            model,
            before,
            {"a": {k: v for k, v in before.items() if k != "classifier.4.bias"}},
            data.features,
            data.labels,
        )
    with pytest.raises(ValueError, match="labels must be 7 integers"):
        counterfactual_effects(model, before, retrained, data.features, data.labels[:3])
