"""Result files: written atomically (temp file in the same folder, then rename).

A reader - or an interrupted run - never sees a half-written CSV or JSON: the
new content appears under its final name in one ``os.replace``. Files get the
mode ``open()`` would give them (``0o666`` less the process umask, so ``0644``
by default), not ``mkstemp``'s private ``0600``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


def _create_temp_beside(path: Path) -> tuple[int, Path]:
    """Create ``.<name>.<random>.tmp`` beside ``path``, mode 0o666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; rename it onto ``path`` only on success.

    The temp file is removed when the body (or the final flush, e.g. with
    ``ENOSPC``) raises, so a failed write leaves the previous file or nothing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp_beside(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_csv(
    path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Write ``rows`` with exactly ``columns`` (in that order) atomically.

    Values are written as they are (an integer stays ``3``, never ``3.0``,
    even in a column where other rows have no value); a missing key, ``None``
    and NaN are empty cells; keys outside ``columns`` are not written.
    """
    with atomic_open(path) as handle:
        writer = csv.DictWriter(
            handle, list(columns), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _cell(value: Any) -> Any:
    """``None`` and NaN as an empty cell; numpy scalars as Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write pretty, key-sorted JSON atomically."""
    with atomic_open(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def write_text(path: Path, text: str) -> None:
    """Write a text file (e.g. a LaTeX table) atomically."""
    with atomic_open(path) as handle:
        handle.write(text)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing or unreadable."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None
