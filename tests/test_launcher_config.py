"""Bad run-config values through the launcher CLI: exit 2 before anything starts.

:data:`BAD_CONFIGS` is drawn from :func:`tracefl.config.validate` and
:func:`tracefl.config.parse_run_config`; each row names the key, the value as
the message shows it and a fragment of what is allowed. To cover a new check,
add a row: the CLI tests here and, for rows marked ``flwr=True``, the real
``flwr run`` tests in ``tests/test_flwr_run_config.py`` pick it up.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tooling.flower_local import main

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BadConfig:
    """``args`` as typed after ``-c``; the error must contain the other three.

    ``value`` is the bad value as the message shows it (after type conversion,
    e.g. ``-1.0`` for ``lr=-1``). ``flwr=True`` rows are also run through real
    ``flwr run``: they must pass flwr's own checks (known keys) and fail in
    the ServerApp before training.
    """

    args: tuple[str, ...]
    key: str
    value: str
    allowed: str
    flwr: bool = False

    @property
    def id(self) -> str:
        return " ".join(self.args)


def bad(
    *args: str, key: str, value: str, allowed: str, flwr: bool = False
) -> BadConfig:
    return BadConfig(args, key, value, allowed, flwr)


POSITIVE_INTS = (
    "num-server-rounds",
    "local-epochs",
    "batch-size",
    "max-per-client-data-size",
    "max-server-data-size",
    "image-size",
    "max-seq-len",
    "provenance-inputs-per-label",
    "provenance-max-inputs",
    "label-min-count",
    "provenance-chunk-size",
    "faulty-max-inputs",
    "feddebug-num-inputs",
)

BAD_CONFIGS: list[BadConfig] = [
    # one of a fixed set
    bad(
        "dataset=foo", key="dataset", value="'foo'", allowed="allowed values are mnist"
    ),
    bad("model=gpt9", key="model", value="'gpt9'", allowed="allowed values are cnn"),
    bad(
        "dataset=dbpedia_14",
        "model=cnn",
        key="model",
        value="'cnn'",
        allowed="needs a text model",
    ),
    bad("fusion=fedsgd", key="fusion", value="'fedsgd'", allowed="fedavg, fedprox"),
    bad(
        "optimizer=rmsprop",
        key="optimizer",
        value="'rmsprop'",
        allowed="sgd, adam, adamw",
        flwr=True,
    ),
    bad("device=tpu", key="device", value="'tpu'", allowed="auto, cpu, cuda"),
    bad(
        "dp-clipping=both", key="dp-clipping", value="'both'", allowed="server, client"
    ),
    # positive integers
    *(
        bad(f"{key}=0", key=key, value="0", allowed="must be >= 1")
        for key in POSITIVE_INTS
    ),
    # finite positive / non-negative numbers
    bad("lr=0", key="lr", value="0.0", allowed="finite number > 0"),
    bad("lr=-1", key="lr", value="-1.0", allowed="finite number > 0", flwr=True),
    bad("lr=inf", key="lr", value="inf", allowed="finite number > 0"),
    bad("lr=nan", key="lr", value="nan", allowed="finite number > 0"),
    bad("round-timeout=0", key="round-timeout", value="0.0", allowed="> 0"),
    bad("round-timeout=-5", key="round-timeout", value="-5.0", allowed="> 0"),
    bad("momentum=-0.1", key="momentum", value="-0.1", allowed=">= 0"),
    bad("weight-decay=-1", key="weight-decay", value="-1.0", allowed=">= 0"),
    bad("proximal-mu=-1", key="proximal-mu", value="-1.0", allowed=">= 0"),
    bad("noise-multiplier=-1", key="noise-multiplier", value="-1.0", allowed=">= 0"),
    bad("min-partition-size=-1", key="min-partition-size", value="-1", allowed=">= 0"),
    bad("dirichlet-alpha=0", key="dirichlet-alpha", value="0.0", allowed="> 0"),
    bad(
        "dirichlet-alpha=-1",
        key="dirichlet-alpha",
        value="-1.0",
        allowed="> 0",
        flwr=True,
    ),
    # ranges
    bad(
        "server-test-fraction=0",
        key="server-test-fraction",
        value="0.0",
        allowed="strictly between 0 and 1",
    ),
    bad(
        "server-test-fraction=1.5",
        key="server-test-fraction",
        value="1.5",
        allowed="strictly between 0 and 1",
    ),
    bad("beta-decay=0", key="beta-decay", value="0.0", allowed="(0, 1]"),
    bad("beta-decay=1.5", key="beta-decay", value="1.5", allowed="(0, 1]"),
    bad(
        "feddebug-na-threshold=1",
        key="feddebug-na-threshold",
        value="1.0",
        allowed="[0, 1)",
    ),
    bad("fraction-train=0", key="fraction-train", value="0.0", allowed="must be > 0"),
    bad("fraction-train=1.5", key="fraction-train", value="1.5", allowed="[0, 1]"),
    bad(
        "fraction-evaluate=-0.1",
        key="fraction-evaluate",
        value="-0.1",
        allowed="[0, 1]",
    ),
    bad("min-train-nodes=0", key="min-train-nodes", value="0", allowed="must be >= 1"),
    bad(
        "min-train-nodes=11",
        "min-available-nodes=11",
        key="min-train-nodes",
        value="11",
        allowed="0..10 (the federation's size)",
    ),
    bad(
        "min-available-nodes=1",
        key="min-available-nodes",
        value="1",
        allowed=">= min-train-nodes (2)",
        flwr=True,
    ),
    bad(
        "min-evaluate-nodes=11",
        key="min-evaluate-nodes",
        value="11",
        allowed="0..10 (the federation's size)",
    ),
    bad(
        "provenance-rounds=abc",
        key="provenance-rounds",
        value="'abc'",
        allowed="'all' or comma-separated round numbers",
    ),
    bad(
        "provenance-rounds='5'",
        key="provenance-rounds",
        value="'5'",
        allowed="<= num-server-rounds (3)",
    ),
    bad(
        "dataset=pathmnist",
        "image-size=32",
        key="image-size",
        value="32",
        allowed="28, 64, 128, 224",
    ),
    # faulty clients and label flips
    bad(
        "faulty-clients=x",
        "label-flip=1:0",
        key="faulty-clients",
        value="'x'",
        allowed="comma-separated partition ids",
    ),
    bad(
        "faulty-clients='10'",
        "label-flip=1:0",
        key="faulty-clients",
        value="'10'",
        allowed="0..9 (the federation has 10 partitions)",
    ),
    bad(
        "faulty-clients='0,0'",
        "label-flip=1:0",
        key="faulty-clients",
        value="'0,0'",
        allowed="must not repeat",
    ),
    bad(
        "faulty-clients='0'",
        "label-flip=1:1",
        key="label-flip",
        value="'1:1'",
        allowed="flipped to itself",
    ),
    bad(
        "faulty-clients='0'",
        "label-flip=1-0",
        key="label-flip",
        value="'1-0'",
        allowed="'source:target' label pairs",
    ),
    bad(
        "faulty-clients='0'",
        "label-flip=1:10",
        key="label-flip",
        value="'1:10'",
        allowed="0..9 for dataset 'mnist'",
    ),
    bad(
        "label-flip=1:0",
        key="faulty-clients",
        value="''",
        allowed="must be set together",
    ),
    bad(
        "num-clients=2",
        "min-train-nodes=1",
        "min-available-nodes=1",
        "faulty-clients='0,1'",
        "label-flip=1:0",
        key="faulty-clients",
        value="'0,1'",
        allowed="at least one client must be non-faulty",
    ),
    # differential privacy
    bad(
        "noise-multiplier=1",
        key="clipping-norm",
        value="0.0",
        allowed="must be > 0 when noise-multiplier > 0",
    ),
    bad("clipping-norm=-1", key="clipping-norm", value="-1.0", allowed=">= 0"),
    bad(
        "fedinfluence=true",
        "optimizer='adam'",
        key="optimizer",
        value="'adam'",
        allowed="Fed-Influence models (momentum) SGD",
    ),
    # types
    bad(
        "lr='abc'",
        key="lr",
        value="'abc'",
        allowed="must be a number",
        flwr=True,
    ),
    bad(
        "num-clients=2.5", key="num-clients", value="2.5", allowed="must be an integer"
    ),
    bad("num-clients=-1", key="num-clients", value="-1", allowed="must be >= 0"),
    bad("seed=true", key="seed", value="True", allowed="must be an integer"),
    bad("plots=maybe", key="plots", value="'maybe'", allowed="true or false"),
    bad("dataset=1", key="dataset", value="1", allowed="must be a string"),
    # unknown keys
    bad(
        "nmu-clients=3",
        key="nmu-clients",
        value="",
        allowed="Did you mean 'num-clients'? Known keys: backdoor-clients",
    ),
]


def cli_args(row: BadConfig) -> list[str]:
    return [arg for assignment in row.args for arg in ("-c", assignment)]


def assert_names_the_culprit(message: str, row: BadConfig) -> None:
    assert f"'{row.key}'" in message, message
    assert row.value in message, message
    assert row.allowed in message, message


def test_at_least_forty_bad_values() -> None:
    assert len(BAD_CONFIGS) >= 40
    assert len({row.id for row in BAD_CONFIGS}) == len(BAD_CONFIGS)
    assert sum(row.flwr for row in BAD_CONFIGS) >= 5


@pytest.mark.parametrize("row", BAD_CONFIGS, ids=lambda row: row.id)
def test_cli_rejects_before_starting_anything(
    row: BadConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    start = time.monotonic()
    rc = main(["--log-dir", str(logs), *cli_args(row)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ")
    assert_names_the_culprit(err, row)
    assert not logs.exists()  # no SuperLink, no reaper, no log was started
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "row",
    [BAD_CONFIGS[0], next(r for r in BAD_CONFIGS if r.id == "lr=-1"), BAD_CONFIGS[-1]],
    ids=lambda row: row.id,
)
def test_cli_subprocess_rejects_before_starting_anything(
    row: BadConfig, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [sys.executable, "-m", "tooling.flower_local", "--log-dir", str(logs)]
        + cli_args(row),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_names_the_culprit(proc.stderr, row)
    assert proc.stdout == ""
    assert not logs.exists()


def test_deployment_checks_num_clients_of_the_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["--deployment", "3", "--log-dir", str(tmp_path / "logs")]
        + ["-c", "faulty-clients='5'", "-c", "label-flip=1:0"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "partition ids must be in 0..2 (the federation has 3 partitions)" in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "num-server-rounds=1 junk"], "'junk' is not a key=value pair"),
        (["-c", "output-dir=/a b"], "'b' is not a key=value pair"),
        (["-c", 'output-dir="x\\q"'], "is not a valid TOML value"),
    ],
)
def test_unreadable_arguments_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--log-dir", str(tmp_path / "logs"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-supernodes", "0"], "--num-supernodes must be >= 1, got 0"),
        (["--deployment", "0"], "--deployment must be >= 1, got 0"),
        (["--client-cpus", "0"], "--client-cpus must be >= 1, got 0"),
        (["--timeout", "-1"], "--timeout must be > 0 seconds, got -1.0"),
    ],
)
def test_bad_launcher_flags_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
