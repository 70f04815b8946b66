"""The round decomposition theta_t = sum_k A_k * theta_k + r (FusedRound)."""

from __future__ import annotations

import pytest
import torch

from tracefl.attribution import FusedRound


def states(seed: int, k: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(3, 4, generator=gen),
            "b": torch.randn(3, generator=gen),
            "count": torch.tensor(7),
        }
        for _ in range(k)
    ]


def test_weighted_average_matches_a_literal_fedavg() -> None:
    prev, *clients = states(0, 4)
    n = [10, 30, 60]
    agg = {
        key: sum(nk * c[key].double() for nk, c in zip(n, clients, strict=True))
        / sum(n)
        for key in ("w", "b")
    }
    rnd = FusedRound.weighted_average(
        2, "fedavg", ["a", "b", "c"], n, prev, clients, {**agg, "count": prev["count"]}
    )
    assert set(rnd.previous) == {"w", "b"}  # integer buffers are left out
    assert rnd.data_share == pytest.approx((0.1, 0.3, 0.6))
    for key in ("w", "b"):
        assert torch.allclose(rnd.reconstruct()[key], agg[key], atol=1e-12)
        assert rnd.residual[key].abs().max() < 1e-6
        # The fused updates add up to the global step.
        step = sum(f[key] for f in rnd.fused_updates())
        assert torch.allclose(step, agg[key] - prev[key].double(), atol=1e-6)
        assert rnd.residual_update()[key].abs().max() < 1e-6
        delta = rnd.updates()[1][key]
        assert torch.equal(delta, clients[1][key].double() - prev[key].double())


def test_noise_lands_in_the_residual() -> None:
    prev, *clients = states(1, 3)
    n = [1, 1]
    noise = {k: torch.full_like(prev[k], 0.5) for k in ("w", "b")}
    agg = {k: (clients[0][k] + clients[1][k]) / 2 + noise[k] for k in ("w", "b")}
    rnd = FusedRound.weighted_average(1, "fedavg", ["x", "y"], n, prev, clients, agg)
    assert torch.allclose(rnd.residual["w"], noise["w"].double(), atol=1e-6)
    assert torch.allclose(rnd.residual_update()["b"], noise["b"].double(), atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_ids": ("a", "a")}, "unique"),
        ({"num_examples": (1,)}, "num_examples has 1"),
        ({"num_examples": (1, 0)}, "positive"),
    ],
)
def test_inconsistent_rounds_are_rejected(change: dict, message: str) -> None:
    prev, *clients = states(2, 3)
    rnd = FusedRound.weighted_average(
        1, "fedavg", ["x", "y"], [1, 2], prev, clients, prev
    )
    fields = {f: getattr(rnd, f) for f in rnd.__dataclass_fields__}
    with pytest.raises(ValueError, match=message):
        FusedRound(**{**fields, **change})


def test_missing_key_is_rejected() -> None:
    prev, *clients = states(3, 3)
    rnd = FusedRound.weighted_average(
        1, "fedavg", ["x", "y"], [1, 2], prev, clients, prev
    )
    fields = {f: getattr(rnd, f) for f in rnd.__dataclass_fields__}
    broken = ({"w": clients[0]["w"]}, rnd.clients[1])
    with pytest.raises(ValueError, match=r"clients\[0\] keys differ"):
        FusedRound(**{**fields, "clients": broken})
