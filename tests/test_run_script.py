"""``bash scripts/run.sh``: the README's first command, through the real script.

It replaces an earlier default run's results (the committed ``results/default``
on a fresh clone), so a new user's first command never stops at "output-dir
already holds the results of another run". Run-config overrides keep it tiny
and send it to a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "num-server-rounds=1",
    "max-per-client-data-size=100",
    "max-server-data-size=200",
    "provenance-max-inputs=4",
    "methods=paper,update",
)


def run_script(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "run.sh"), f"output-dir={out}", *TINY, *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def earlier_run(out: Path) -> None:
    """What an earlier default run left: its CSVs, run.json and a round plot."""
    out.mkdir()
    (out / "rounds.csv").write_text("round,status\n1,traced\n2,traced\n3,traced\n")
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
    (out / "provenance_round_3.png").write_bytes(b"old")


def test_run_script_replaces_an_earlier_default_run(tmp_path: Path) -> None:
    out = tmp_path / "default"
    earlier_run(out)
    proc = run_script(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["config"]["overwrite"] is True
    assert pd.read_csv(out / "rounds.csv")["round"].tolist() == [1]
    assert not (out / "provenance_round_3.png").exists()
    assert (out / "provenance_round_1.png").is_file()


def test_run_script_refuses_when_told_not_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "default"
    earlier_run(out)
    proc = run_script(out, "overwrite=false")
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "already holds the results of another run" in proc.stderr
    assert "overwrite=true" in proc.stderr
    assert (out / "provenance_round_3.png").read_bytes() == b"old"
