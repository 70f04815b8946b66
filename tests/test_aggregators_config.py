"""Aggregator run-config keys: registry, defaults, Flower arguments, validation."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from tracefl.aggregators import AGGREGATORS, get_aggregator, sampling_arguments
from tracefl.config import (
    FUSIONS,
    ConfigError,
    check_federation,
    parse_run_config,
    run_config_keys,
    sampled_train_nodes,
)


def test_registry_and_config_list_the_same_fusions_in_order() -> None:
    assert tuple(AGGREGATORS) == FUSIONS
    for name, cls in AGGREGATORS.items():
        assert cls.name == name
        assert set(cls.keys) <= set(run_config_keys()), name


def test_unknown_fusion_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known: fedavg, fedprox"):
        get_aggregator("fedsgd")


EXPECTED_STRATEGY = {
    "fedavg": (FedAvg, {}),
    "fedprox": (FedProx, {"proximal_mu": 0.05}),
    "fedavgm": (FedAvgM, {"server_learning_rate": 0.5, "server_momentum": 0.8}),
    "fedadam": (
        FedAdam,
        {"eta": 0.02, "eta_l": 0.03, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4},
    ),
    "fedyogi": (
        FedYogi,
        {"eta": 0.02, "eta_l": 0.03, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4},
    ),
    "fedadagrad": (
        FedAdagrad,
        {"eta": 0.02, "eta_l": 0.03, "beta_1": 0.0, "beta_2": 0.0, "tau": 1e-4},
    ),
    "fedmedian": (FedMedian, {}),
    "fedtrimmedavg": (FedTrimmedAvg, {"beta": 0.3}),
    "krum": (Krum, {"num_malicious_nodes": 2, "num_nodes_to_select": 1}),
    "multikrum": (MultiKrum, {"num_malicious_nodes": 2, "num_nodes_to_select": 4}),
    "bulyan": (Bulyan, {"num_malicious_nodes": 2}),
}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_build_passes_the_run_config_to_flowers_strategy(fusion: str) -> None:
    cfg = parse_run_config(
        {
            "fusion": fusion,
            "num-clients": 14,  # n = int(14 * 0.9) = 12 >= 4f + 3 = 11
            "fraction-train": 0.9,
            "min-train-nodes": 3,
            "min-available-nodes": 4,
            "fraction-evaluate": 0.5,
            "min-evaluate-nodes": 1,
            "proximal-mu": 0.05,
            "server-learning-rate": 0.5,
            "server-momentum": 0.8,
            "eta": 0.02,
            "lr": 0.03,
            "beta-1": 0.8,
            "beta-2": 0.95,
            "tau": 1e-4,
            "trim-beta": 0.3,
            "num-malicious-nodes": 2,
            "num-nodes-to-select": 4,
        }
    )
    strategy = get_aggregator(fusion).build(cfg, sampling_arguments(cfg))
    cls, expected = EXPECTED_STRATEGY[fusion]
    assert type(strategy) is cls
    for attr, value in expected.items():
        assert getattr(strategy, attr) == value, attr
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.9, 3)
    assert (strategy.fraction_evaluate, strategy.min_evaluate_nodes) == (0.5, 1)
    assert strategy.min_available_nodes == 4


def test_defaults() -> None:
    cfg = parse_run_config({})
    assert (cfg.server_learning_rate, cfg.server_momentum) == (1.0, 0.9)
    assert (cfg.eta, cfg.beta_1, cfg.beta_2, cfg.tau) == (0.01, 0.9, 0.99, 0.001)
    assert cfg.trim_beta == 0.2
    assert (cfg.num_malicious_nodes, cfg.num_nodes_to_select) == (0, 1)
    assert sampled_train_nodes(cfg, 10) == 10
    assert sampled_train_nodes(parse_run_config({"fraction-train": 0.5}), 10) == 5


@pytest.mark.parametrize(
    "overrides",
    [
        {"fusion": "krum", "num-malicious-nodes": 3},  # n = 10 >= 2*3 + 3
        {"fusion": "multikrum", "num-malicious-nodes": 3, "num-nodes-to-select": 7},
        {"fusion": "bulyan", "num-malicious-nodes": 1},  # n = 10 >= 7
        {"fusion": "fedtrimmedavg", "trim-beta": 0.49},
        {"fusion": "fedtrimmedavg", "trim-beta": 0.0},
        {"fusion": "fedavgm", "server-momentum": 0.0, "server-learning-rate": 3.0},
        {"fusion": "fedadam", "beta-1": 0.0, "beta-2": 0.0},
        {"fusion": "bulyan", "num-clients": 3, "min-available-nodes": 3},  # f = 0
    ],
)
def test_boundary_values_are_accepted(overrides: dict[str, Any]) -> None:
    parse_run_config(overrides)


INVALID = [
    ({"fusion": "fedsgd"}, "fusion", "fedavgm"),
    ({"server-learning-rate": 0.0}, "server-learning-rate", "(0.0, inf)"),
    ({"server-learning-rate": float("inf")}, "server-learning-rate", "finite"),
    ({"server-momentum": 1.0}, "server-momentum", "[0.0, 1.0)"),
    ({"server-momentum": -0.1}, "server-momentum", "[0.0, 1.0)"),
    ({"eta": 0.0}, "eta", "(0.0, inf)"),
    ({"eta": float("nan")}, "eta", "finite"),
    ({"beta-1": 1.0}, "beta-1", "[0.0, 1.0)"),
    ({"beta-1": -0.5}, "beta-1", "[0.0, 1.0)"),
    ({"beta-2": 1.0}, "beta-2", "[0.0, 1.0)"),
    ({"tau": 0.0}, "tau", "(0.0, inf)"),
    ({"tau": -1e-3}, "tau", "(0.0, inf)"),
    ({"trim-beta": 0.5}, "trim-beta", "[0.0, 0.5)"),
    ({"trim-beta": -0.1}, "trim-beta", "[0.0, 0.5)"),
    ({"num-malicious-nodes": -1}, "num-malicious-nodes", ">= 0"),
    ({"num-nodes-to-select": 0}, "num-nodes-to-select", ">= 1"),
    ({"num-malicious-nodes": 1.5}, "num-malicious-nodes", "integer"),
    ({"eta": "0.1"}, "eta", "number"),
    # Cross-key: enough clients per round for f (num-clients = 10: n = 10).
    (
        {"num-clients": 10, "fusion": "krum", "num-malicious-nodes": 4},
        "num-malicious-nodes",
        "2f + 3 = 11",
    ),
    (
        {"num-clients": 10, "fusion": "multikrum", "num-malicious-nodes": 4},
        "num-malicious-nodes",
        "samples 10",
    ),
    (
        {"num-clients": 10, "fusion": "bulyan", "num-malicious-nodes": 2},
        "num-malicious-nodes",
        "4f + 3",
    ),
    (
        {"fusion": "bulyan", "num-clients": 2, "min-available-nodes": 2},
        "num-malicious-nodes",
        "at least 4f + 3 = 3",
    ),
    (
        {
            "num-clients": 10,
            "fusion": "krum",
            "num-malicious-nodes": 1,
            "fraction-train": 0.4,
        },
        "num-malicious-nodes",
        "samples 4",
    ),
    (
        {
            "num-clients": 10,
            "fusion": "multikrum",
            "num-malicious-nodes": 2,
            "num-nodes-to-select": 9,
        },
        "num-nodes-to-select",
        "<= n - f = 8",
    ),
]


def test_federation_rules_wait_for_the_federation_size() -> None:
    """num-clients = 0: checked once the federation is known (launcher, ServerApp)."""
    cfg = parse_run_config({"fusion": "bulyan", "num-malicious-nodes": 1})
    check_federation(cfg, 7)  # n = 7 = 4f + 3
    with pytest.raises(ConfigError, match=r"'num-malicious-nodes'.*federation of 6"):
        check_federation(cfg, 6)


@pytest.mark.parametrize(("overrides", "key", "allowed"), INVALID)
def test_invalid_values_name_key_value_and_allowed(
    overrides: dict[str, Any], key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config(overrides)
    message = str(info.value)
    assert f"'{key}'" in message
    assert allowed in message
