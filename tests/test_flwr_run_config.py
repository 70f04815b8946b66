"""Bad run-config values through real ``flwr run`` (one SuperLink, several runs).

``flwr run`` checks only that the keys exist; the values reach the ServerApp,
which must fail before training and record ``failed`` naming the key, value and
what is allowed. The rows are those of ``tests/test_launcher_config.py``
marked ``flwr=True``.

The ``run.json`` assertions need the ServerApp side of issue 12 (a ``failed``
record for any exception from its first line); until then the ServerApp raises
before writing ``run.json``, and the launcher reports the missing status.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_launcher_config import BAD_CONFIGS, BadConfig
from tooling.flower_local import LocalSuperLink, parse_assignments
from tracefl.run_status import FAILED, read_run_status

pytestmark = pytest.mark.e2e

FLWR_ROWS = [row for row in BAD_CONFIGS if row.flwr]


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    base = tmp_path_factory.mktemp("flwr-bad-config")
    with LocalSuperLink(workdir=base, log_dir=base / "logs") as superlink:
        yield superlink
    assert superlink.leftover_pids() == []


def test_at_least_five_rows() -> None:
    assert len(FLWR_ROWS) >= 5


@pytest.mark.parametrize("row", FLWR_ROWS, ids=lambda row: row.id)
def test_flwr_run_fails_before_training_naming_the_key(
    link: LocalSuperLink,
    tmp_path: Path,
    row: BadConfig,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    config = {**parse_assignments(list(row.args)), "output-dir": str(out)}
    log_path = tmp_path / "flwr-run.log"
    start = time.monotonic()
    with log_path.open("w") as log:
        rc = link.run_app(config, num_supernodes=2, stdout=log, timeout=600)
    print(f"{row.id}: rc {rc} after {time.monotonic() - start:.1f}s")
    log_text = log_path.read_text()
    assert rc == 1, log_text[-3000:]
    # The launcher says what happened and where to look.
    err = capsys.readouterr().err
    assert "error: run status: " in err and f"logs: {log_path}" in err, err
    assert "[ROUND 1/" not in log_text  # failed before any training round
    assert not (out / "rounds.csv").exists()
    status = read_run_status(out)
    assert status.status == FAILED, status.describe()  # ServerApp (issue 12)
    message = f"{status.reason} {status.error}"
    assert f"'{row.key}'" in message and row.value in message, message
    assert row.allowed in message, message
