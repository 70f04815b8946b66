"""``-c key=value``: rendered so flwr reads back the exact value, parsed as flwr does.

The oracle is flwr's own parser (``flwr.common.config.parse_config_args``), the
code that reads ``flwr run --run-config`` arguments.
"""

from __future__ import annotations

import math
from typing import Any

import click
import pytest
from flwr.common.config import parse_config_args

from tooling.flower_local import build_parser, run_config_from_args, run_json_path
from tooling.run_config_args import (
    RunConfigArgError,
    config_args,
    parse_assignments,
    toml_value,
)

VALUES: list[Any] = [
    "/x/it's",
    'say "hi"',
    "both ' and \" quotes",
    "C:\\temp\\new",
    "trailing backslash \\",
    "\\u0022 literally",
    "with spaces  and\ttab",
    "line\nbreak",
    "key=value inside",
    "# not a comment",
    "",
    " leading and trailing ",
    "ünïcödé ✓ 数据 🌸",
    "'single-quoted'",
    '"double-quoted"',
    "del\x7fchar",
    0,
    -3,
    2**53,
    0.001,
    1e-05,
    -0.0,
    3.5e300,
    math.inf,
    -math.inf,
    True,
    False,
]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_flwr_reads_back_every_rendered_value(value: Any) -> None:
    (arg,) = config_args("-c", {"output-dir": value})[1::2]
    assert same(parse_config_args([arg])["output-dir"], value)
    assert same(parse_assignments([arg])["output-dir"], value)


def test_nan_survives() -> None:
    arg = f"lr={toml_value(math.nan)}"
    assert math.isnan(parse_config_args([arg])["lr"])
    assert math.isnan(parse_assignments([arg])["lr"])


def test_all_values_in_one_argument_like_flwr() -> None:
    values = {f"k{i}": v for i, v in enumerate(VALUES)}
    line = " ".join(f"{k}={toml_value(v)}" for k, v in values.items())
    for parsed in (parse_config_args([line]), parse_assignments([line])):
        assert parsed.keys() == values.keys()
        assert all(same(parsed[k], v) for k, v in values.items())


@pytest.mark.parametrize(
    "args",
    [
        ["num-server-rounds=1"],
        ["num-server-rounds=1 local-epochs=2", "lr=0.5"],
        ["dataset='mnist'"],
        ['output-dir="/tmp/a b"'],
        ["output-dir='/tmp/it is'"],
        ["plots=false provenance=true"],
        ["lr=1e-3", "lr=2e-3"],  # the later one wins
        ["seed=-1"],
        ["a.b=1"],
        ["x=inf y=-inf"],
        ["n=1_000 h=0x10"],
    ],
)
def test_same_result_as_flwr_for_everything_flwr_accepts(args: list[str]) -> None:
    assert parse_assignments(args) == parse_config_args(args)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("model=resnet18", {"model": "resnet18"}),
        ("output-dir=/x/it's", {"output-dir": "/x/it's"}),
        ("data-dir=/data/mnist", {"data-dir": "/data/mnist"}),
        ("run-name=a-b_c lr=0.1", {"run-name": "a-b_c", "lr": 0.1}),
    ],
)
def test_bare_words_are_strings_where_flwr_refuses(arg: str, expected: dict) -> None:
    with pytest.raises(click.ClickException):
        parse_config_args([arg])
    assert parse_assignments([arg]) == expected


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("num-server-rounds=1 junk", "junk"),
        ("output-dir=/a b/c", "b/c"),
        ("novalue", "novalue"),
        ("key=", "key="),
        ("", ""),
    ],
)
def test_text_outside_pairs_is_an_error_not_dropped(arg: str, named: str) -> None:
    with pytest.raises(RunConfigArgError, match="is not a key=value pair") as err:
        parse_assignments([arg])
    assert repr(named) in str(err.value)


def test_flwr_silently_drops_what_we_reject() -> None:
    assert parse_config_args(["num-server-rounds=1 junk"]) == {"num-server-rounds": 1}


def test_invalid_quoted_value_names_the_argument() -> None:
    with pytest.raises(RunConfigArgError, match=r'output-dir = "x\\q" is not a valid'):
        parse_assignments(['output-dir="x\\q"'])


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, None, b"bytes"])
def test_non_scalar_values_are_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="str, int, float or bool"):
        toml_value(bad)


@pytest.mark.parametrize("key", ["", "a b", "a=b"])
def test_bad_keys_are_refused(key: str) -> None:
    with pytest.raises(RunConfigArgError, match="run-config key"):
        config_args("-c", {key: 1})


def test_run_json_path_for_valid_and_invalid_configs(tmp_path) -> None:
    assert run_json_path({"output-dir": "/x/it's"}, tmp_path) == (
        tmp_path / "/x/it's" / "run.json"
    )
    assert run_json_path({}, tmp_path) == tmp_path / "results/default/run.json"
    assert run_json_path({"run-name": "r1", "lr": -1}, tmp_path) == (
        tmp_path / "results/r1/run.json"
    )
    assert run_json_path({"output-dir": "out", "seed": "x"}, tmp_path) == (
        tmp_path / "out/run.json"
    )


def test_cli_output_dir_is_a_default_that_c_overrides() -> None:
    odd = '/x/it\'s "q" ü'
    args = build_parser().parse_args(["--output-dir", odd, "-c", "lr=0.5"])
    assert run_config_from_args(args) == {"lr": 0.5, "output-dir": odd}
    args = build_parser().parse_args(["--output-dir", odd, "-c", "output-dir=/mine"])
    assert run_config_from_args(args) == {"output-dir": "/mine"}
