"""Differential privacy: provenance sees the clipped client models and noised global."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from tests.replies import NodeListGrid, array_record, train_reply
from tracefl.aggregators.fedavg import FedAvgAggregator
from tracefl.config import ConfigError, parse_run_config, sampled_train_nodes
from tracefl.server_app import build_strategy
from tracefl.strategy import FusionCapture, ProvenanceStrategy, RoundOutcome

pytestmark = pytest.mark.usefixtures("task_identity")

SHAPES = {"w": (64, 32), "b": (32,)}


def run_round(noise: float, clip: float, seed: int = 0) -> tuple[dict, RoundOutcome]:
    rng = np.random.default_rng(seed)
    initial = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    # Client updates of very different sizes: some far above the clipping norm.
    scales = {0: 0.01, 1: 1.0, 2: 50.0, 3: 5.0}
    sizes = {0: 10, 1: 20, 2: 30, 3: 40}
    clients = {
        pid: {
            k: (initial[k] + scale * rng.normal(size=s)).astype(np.float32)
            for k, s in SHAPES.items()
        }
        for pid, scale in scales.items()
    }
    aggregator = FedAvgAggregator()
    capture = FusionCapture(FedAvg(min_available_nodes=1), aggregator)
    seen: list[RoundOutcome] = []
    strategy = ProvenanceStrategy(
        DifferentialPrivacyServerSideFixedClipping(capture, noise, clip, len(clients)),
        capture=capture,
        aggregator=aggregator,
        num_classes=3,
        min_train_nodes=1,
        on_round=seen.append,
        noise_expected=noise > 0,
    )
    strategy.configure_train(
        1, array_record(initial), ConfigRecord(), NodeListGrid([100 + p for p in sizes])
    )
    agg, _ = strategy.aggregate_train(
        1,
        [train_reply(p, v, num_examples=sizes[p]) for p, v in clients.items()],
    )
    (outcome,) = seen
    assert outcome.fused is not None
    np.testing.assert_array_equal(
        outcome.fused.aggregate["w"].numpy(), agg["w"].numpy()
    )
    return initial, outcome


def flat(state: dict) -> np.ndarray:
    return np.concatenate(
        [np.asarray(state[k]).ravel().astype(np.float64) for k in SHAPES]
    )


@pytest.mark.parametrize("clip", [1.0, 10.0])
def test_fused_client_models_are_the_clipped_ones(clip: float) -> None:
    initial, out = run_round(noise=0.0, clip=clip)
    start = flat(initial)
    norms = [np.linalg.norm(flat(c) - start) for c in out.fused.clients]
    assert max(norms) <= clip * (1 + 1e-5)
    assert min(norms) < clip  # the tiny update is not inflated to the norm
    for full, state in zip(out.client_states, out.fused.clients, strict=True):
        np.testing.assert_array_equal(full["w"].numpy(), state["w"].numpy())


def test_zero_noise_global_is_exactly_the_decomposition() -> None:
    _, out = run_round(noise=0.0, clip=5.0)
    assert out.unexplained < 1e-6
    recon = out.fused.reconstruct()
    for key in SHAPES:
        np.testing.assert_allclose(
            recon[key].numpy(), out.fused.aggregate[key].numpy(), atol=1e-12
        )


def test_noise_is_the_residual_and_has_the_dp_scale() -> None:
    noise, clip = 0.5, 5.0
    _, out = run_round(noise=noise, clip=clip, seed=1)
    fused = out.fused
    assert fused.noise is not None
    residual = flat({k: fused.noise[k].numpy() for k in SHAPES})
    expected_std = noise * clip / fused.num_clients  # Flower's central DP scale
    assert abs(residual.mean()) < 4 * expected_std / np.sqrt(residual.size)
    assert residual.std() == pytest.approx(expected_std, rel=0.1)
    np.testing.assert_allclose(
        flat({k: fused.residual[k].numpy() for k in SHAPES}), residual, atol=1e-9
    )
    assert out.unexplained > 1e-3  # noise is not explained by the clients


def test_build_strategy_wraps_dp_inside_provenance() -> None:
    def hook(outcome: RoundOutcome) -> None:
        return None

    plain = build_strategy(parse_run_config({}), hook, 10, 10)
    assert isinstance(plain, ProvenanceStrategy) and plain.strategy is plain.capture
    assert type(plain.capture.inner) is FedAvg
    cfg = parse_run_config({"noise-multiplier": 0.01, "clipping-norm": 10.0})
    wrapped = build_strategy(cfg, hook, 10, 10)
    dp = wrapped.strategy
    assert isinstance(dp, DifferentialPrivacyServerSideFixedClipping)
    assert dp.noise_multiplier == 0.01 and dp.clipping_norm == 10.0
    assert dp.num_sampled_clients == sampled_train_nodes(cfg, 10) == 10
    assert dp.strategy is wrapped.capture and wrapped.noise_expected
    client_side = build_strategy(
        parse_run_config({"clipping-norm": 3.0, "dp-clipping": "client"}), hook, 10, 4
    )
    assert isinstance(client_side.strategy, DifferentialPrivacyClientSideFixedClipping)
    assert not client_side.noise_expected


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"noise-multiplier": -0.01, "clipping-norm": 10.0}, "noise-multiplier"),
        ({"noise-multiplier": 0.01, "clipping-norm": -1.0}, "clipping-norm"),
        ({"noise-multiplier": 0.01}, "clipping-norm"),
        ({"noise-multiplier": 0.01, "clipping-norm": 0.0}, "clipping-norm"),
    ],
)
def test_invalid_dp_configs_raise_before_training(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_run_config(overrides)
