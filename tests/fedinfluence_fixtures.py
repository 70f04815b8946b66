"""Small models and a literal FedAvg loop shared by the Fed-Influence tests."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from tracefl.attribution import FusedRound
from tracefl.dataset import LabeledTensors
from tracefl.fedinfluence import (
    FedInfluenceSettings,
    GradientSampler,
    LocalSGD,
    counterfactual_effects,
)
from tracefl.fedinfluence_estimates import SavedEstimates
from tracefl.train import TrainSettings, train


class TinyNet(nn.Module):
    """A conv + two linear layers on 1x8x8 images, with dropout (uses the RNG)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 2, kernel_size=3), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(18, 6),
            nn.Tanh(),
            nn.Dropout(0.3),
            nn.Linear(6, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def tiny_data(seed: int, n: int, classes: int = 3) -> LabeledTensors:
    gen = torch.Generator().manual_seed(seed)
    return LabeledTensors(
        torch.randn(n, 1, 8, 8, generator=gen),
        torch.randint(0, classes, (n,), generator=gen),
    )


def sgd_settings(sgd: LocalSGD, epochs: int = 1, batch_size: int = 8) -> TrainSettings:
    return TrainSettings(
        epochs=epochs,
        batch_size=batch_size,
        optimizer="sgd",
        lr=sgd.lr,
        momentum=sgd.momentum,
        weight_decay=sgd.weight_decay,
        proximal_mu=sgd.proximal_mu,
    )


def fedavg_round(
    global_model: nn.Module,
    datasets: Sequence[LabeledTensors],
    participants: Sequence[int],
    settings: FedInfluenceSettings,
    sgd: LocalSGD,
    server_round: int,
    *,
    epochs: int = 1,
    batch_size: int = 8,
) -> tuple[FusedRound, dict, nn.Module]:
    """One real FedAvg round with samplers; returns the round, payloads, new model."""
    previous = {k: v.clone() for k, v in global_model.state_dict().items()}
    clients, payloads, sizes = [], {}, []
    for k in participants:
        local = copy.deepcopy(global_model)
        sampler = GradientSampler(local, settings, sgd, seed=100 * server_round + k)
        train(
            local,
            datasets[k],
            sgd_settings(sgd, epochs, batch_size),
            torch.device("cpu"),
            seed=server_round * 10 + k,
            on_step=sampler,
        )
        clients.append({n: v.detach().clone() for n, v in local.state_dict().items()})
        payloads[f"c{k}"] = sampler.payload()
        sizes.append(len(datasets[k]))
    total = sum(sizes)
    aggregate = {
        n: sum(s / total * c[n] for s, c in zip(sizes, clients, strict=True))
        for n in previous
    }
    new_model = copy.deepcopy(global_model)
    new_model.load_state_dict(aggregate)
    fused = FusedRound.weighted_average(
        server_round,
        "fedavg",
        [f"c{k}" for k in participants],
        sizes,
        previous,
        clients,
        aggregate,
    )
    return fused, payloads, new_model


def assert_scores_are_the_saved_fip(
    model: nn.Module,
    w_t: dict[str, Tensor],
    saved: SavedEstimates,
    test: LabeledTensors,
    scores: pd.DataFrame,
    inputs: pd.DataFrame,
) -> Tensor:
    """A round's ``fedinfluence`` scores equal its saved FIP's counterfactuals.

    ``scores``/``inputs``: that round's rows of ``scores.csv`` (method
    ``fedinfluence``) and ``inputs.csv``. Returns the responsibility ``(B, K)``.
    """
    idx = inputs["input_index"].to_numpy()
    assert len(idx) > 0
    rows = torch.as_tensor(idx.copy())
    effect = counterfactual_effects(
        model,
        w_t,
        {c: {k: w_t[k].double() + e[k] for k in e} for c, e in saved.fip.items()},
        test.select_features(rows),
        test.labels[rows],
    )
    table = scores.pivot(index="input_index", columns="client", values="score").loc[
        idx, list(saved.client_ids)
    ]
    np.testing.assert_allclose(
        table.to_numpy(), effect.responsibility.numpy(), rtol=1e-9, atol=1e-12
    )
    return effect.responsibility
