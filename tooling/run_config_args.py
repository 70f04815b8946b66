r"""``-c key=value`` run-config arguments, read and written the way ``flwr`` reads them.

``flwr run --run-config`` (flwr 1.42, ``flwr.common.config.parse_config_args``)
finds ``key=value`` pairs with the pattern :data:`FLWR_PAIR` - a value is a
single-quoted string without ``'``, a double-quoted string without ``"``, or a
run of non-space characters - and parses each value as TOML. Text between pairs
that does not match is silently dropped.

:func:`toml_value` renders any str/int/float/bool so that parser reads back
exactly that value: strings become TOML basic strings in double quotes with
``"`` written as ``\u0022`` (the pattern stops at the first ``"``) and
backslashes and control characters escaped, so quotes, backslashes, spaces and
any Unicode survive. :func:`parse_assignments` reads ``-c`` arguments for
TraceFL's launchers exactly as flwr does, with two differences that never change
a value flwr accepts: a bare value that is not TOML (``model=resnet18``,
``output-dir=/x/it's``) is taken as that string, and text that is not part of a
pair is an error instead of being dropped.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

#: flwr 1.42's ``key=value`` pattern (``flwr.common.config.parse_config_args``).
FLWR_PAIR = re.compile(r"(\S+?)=(\'[^\']*\'|\"[^\"]*\"|\S+)")


class RunConfigArgError(ValueError):
    """A ``-c`` argument that cannot be read; the message names it."""


def _toml_basic_string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append("\\u0022")  # flwr's pattern ends a value at any '"'
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    """Render a run-config value as a TOML literal flwr's ``-c`` parser reads back.

    Raises
    ------
    TypeError
        For anything but str, int, float and bool (what a run config holds).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_basic_string(value)
    raise TypeError(
        f"run-config values are str, int, float or bool; got {type(value).__name__} "
        f"{value!r}."
    )


def config_args(flag: str, values: Mapping[str, Any]) -> list[str]:
    """``[flag, "key=<toml>", ...]``: one flag per key, so values may hold spaces."""
    args: list[str] = []
    for key, value in values.items():
        if not key or any(ch.isspace() for ch in key) or "=" in key:
            raise RunConfigArgError(
                f"run-config key {key!r} must be non-empty, without spaces or '='."
            )
        args += [flag, f"{key}={toml_value(value)}"]
    return args


def _parse_value(item: str, key: str, raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError as err:
        if raw[:1] in ("'", '"'):
            raise RunConfigArgError(
                f"-c {item!r}: {key} = {raw} is not a valid TOML value ({err}); "
                'quote strings as "..." and escape backslashes as \\\\.'
            ) from err
        return raw


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """Read ``-c`` arguments (each one or more ``key=value`` pairs) like ``flwr``.

    A later pair overrides an earlier one with the same key, as in flwr.

    Raises
    ------
    RunConfigArgError
        When an argument holds text outside ``key=value`` pairs (e.g. an
        unquoted value with spaces) or a quoted value that is not TOML.
    """
    out: dict[str, Any] = {}
    for item in items:
        pos = 0
        found = False
        for match in FLWR_PAIR.finditer(item):
            between = item[pos : match.start()]
            if between.strip():
                raise _stray(item, between)
            key, raw = match.group(1), match.group(2)
            out[key] = _parse_value(item, key, raw)
            pos = match.end()
            found = True
        if item[pos:].strip() or not found:
            raise _stray(item, item[pos:] if found else item)
    return out


def _stray(item: str, text: str) -> RunConfigArgError:
    return RunConfigArgError(
        f"-c {item!r}: {text.strip()!r} is not a key=value pair; values with "
        'spaces need quotes, e.g. output-dir="/path/with spaces".'
    )
