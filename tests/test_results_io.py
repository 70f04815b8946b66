"""Atomic result files: an interrupted write leaves the old file or nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tracefl.results_io import atomic_open, write_csv, write_json


def test_exception_mid_write_keeps_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "rounds.csv"
    write_csv(path, [{"a": 1, "b": 2}], ["a", "b"])
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("a,b\n9,")
        raise RuntimeError("interrupted")
    assert path.read_text() == "a,b\n1,2\n"
    assert list(tmp_path.iterdir()) == [path]


def test_killed_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from tracefl.results_io import atomic_open\n"
        "with atomic_open(Path(sys.argv[1])) as h:\n"
        "    h.write('{\"partial\": ')\n"
        "    h.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not path.exists()  # readers never see the half-written file
    time.sleep(0.1)


def test_csv_columns_and_json(tmp_path: Path) -> None:
    write_csv(tmp_path / "x.csv", [{"b": 1}], ["a", "b"])
    assert (tmp_path / "x.csv").read_text() == "a,b\n,1\n"
    write_json(tmp_path / "run.json", {"z": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": [1, 2], "z": 1}


def test_csv_keeps_integers_beside_missing_cells(tmp_path: Path) -> None:
    """clients.csv: a failed client has no partition id; the others keep theirs."""
    path = tmp_path / "clients.csv"
    rows = [
        {"client": 0, "status": "fused", "share": np.float64(0.5)},
        {"client": np.int64(1), "status": "fused", "share": float("nan")},
        {"status": "failed", "share": None, "not-a-column": 7},
    ]
    write_csv(path, rows, ["client", "status", "share"])
    assert path.read_text().splitlines() == [
        "client,status,share",
        "0,fused,0.5",
        "1,fused,",
        ",failed,",
    ]
