"""Differential privacy: provenance sees the clipped client models and noised global."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from tracefl.client_app import ATTRIBUTION_KEY
from tracefl.config import ConfigError, parse_run_config
from tracefl.server_app import build_strategy, num_sampled_clients
from tracefl.strategy import ClientRecord, ServerSideDPWithHook, TraceFLFedAvg

pytestmark = pytest.mark.usefixtures("task_identity")


SHAPES = {"w": (64, 32), "b": (32,)}


def arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in values.items()})


def reply(pid: int, n: int, values: dict[str, np.ndarray]) -> Message:
    request = Message(
        content=RecordDict({"config": ConfigRecord({})}),
        dst_node_id=10 + pid,
        message_type="train",
    )
    return Message(
        content=RecordDict(
            {
                "arrays": arrays(values),
                "metrics": MetricRecord({"num-examples": n}),
                ATTRIBUTION_KEY: ConfigRecord(
                    {"partition-id": pid, "label-counts": [1, 2]}
                ),
            }
        ),
        reply_to=request,
    )


def run_round(noise: float, clip: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    initial = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    # Client updates of very different sizes: some far above the clipping norm.
    scales = {0: 0.01, 1: 1.0, 2: 50.0, 3: 5.0}
    sizes = {0: 10, 1: 20, 2: 30, 3: 40}
    clients = {
        pid: {k: initial[k] + scale * rng.normal(size=s) for k, s in SHAPES.items()}
        for pid, scale in scales.items()
    }
    seen: list[tuple[ArrayRecord, list[ClientRecord]]] = []
    wrapper = ServerSideDPWithHook(
        TraceFLFedAvg(),
        lambda r, a, recs: seen.append((a, list(recs))),
        noise_multiplier=noise,
        clipping_norm=clip,
        num_sampled_clients=len(clients),
    )
    wrapper.current_arrays = arrays(initial)  # what configure_train stores
    global_arrays, _ = wrapper.aggregate_train(
        1, [reply(pid, sizes[pid], v) for pid, v in clients.items()]
    )
    assert len(seen) == 1 and seen[0][0] is global_arrays
    return initial, sizes, seen[0][1], global_arrays


def flat(record: ArrayRecord) -> np.ndarray:
    return np.concatenate(
        [record[k].numpy().ravel().astype(np.float64) for k in SHAPES]
    )


def weighted_mean(records: list[ClientRecord], sizes: dict[int, int]) -> np.ndarray:
    total = sum(sizes.values())
    return sum(flat(r.arrays) * sizes[r.partition_id] for r in records) / total


@pytest.mark.parametrize("clip", [1.0, 10.0])
def test_stored_client_updates_are_clipped(clip: float) -> None:
    initial, _, records, _ = run_round(noise=0.0, clip=clip)
    start = np.concatenate([initial[k].ravel() for k in SHAPES]).astype(np.float32)
    norms = [np.linalg.norm(flat(r.arrays) - start) for r in records]
    assert max(norms) <= clip * (1 + 1e-5)
    assert min(norms) < clip  # the tiny update is not inflated to the norm
    assert sorted(r.partition_id for r in records) == [0, 1, 2, 3]


def test_zero_noise_global_is_exactly_the_aggregate_of_stored_models() -> None:
    _, sizes, records, global_arrays = run_round(noise=0.0, clip=5.0)
    np.testing.assert_allclose(
        flat(global_arrays), weighted_mean(records, sizes), rtol=1e-6, atol=1e-6
    )


def test_noise_is_the_only_difference_and_has_the_dp_scale() -> None:
    noise, clip = 0.5, 5.0
    _, sizes, records, global_arrays = run_round(noise=noise, clip=clip, seed=1)
    residual = flat(global_arrays) - weighted_mean(records, sizes)
    expected_std = noise * clip / len(records)  # Flower's central DP noise scale
    assert abs(residual.mean()) < 4 * expected_std / np.sqrt(residual.size)
    assert residual.std() == pytest.approx(expected_std, rel=0.1)


def test_build_strategy_wraps_fedavg_only_when_dp_is_on() -> None:
    plain = build_strategy(parse_run_config({}), lambda *a: None)
    assert type(plain) is TraceFLFedAvg
    cfg = parse_run_config({"noise-multiplier": 0.01, "clipping-norm": 10.0})
    wrapped = build_strategy(cfg, lambda *a: None)
    assert isinstance(wrapped, ServerSideDPWithHook)
    assert wrapped.noise_multiplier == 0.01 and wrapped.clipping_norm == 10.0
    assert wrapped.num_sampled_clients == num_sampled_clients(cfg) == 10
    assert wrapped.strategy.on_round_end is None  # the hook runs after the noise
    client_side = build_strategy(
        parse_run_config({"clipping-norm": 3.0, "dp-clipping": "client"}),
        lambda *a: None,
    )
    assert type(client_side).__name__ == "ClientSideDPWithHook"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"noise-multiplier": -0.01, "clipping-norm": 10.0}, "noise-multiplier"),
        ({"noise-multiplier": 0.01, "clipping-norm": -1.0}, "clipping-norm"),
        ({"noise-multiplier": 0.01}, "clipping-norm"),
        ({"noise-multiplier": 0.01, "clipping-norm": 0.0}, "clipping-norm"),
        ({"clipping-norm": 10.0, "fusion": "fedprox"}, "fusion"),
    ],
)
def test_invalid_dp_configs_raise_before_training(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_run_config(overrides)
