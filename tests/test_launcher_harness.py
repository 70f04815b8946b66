"""The fault-injection harness itself: the faulty app is a valid Flower app whose
replies are corrupted exactly as documented, and the small tmpfs really fills up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.cli.config_utils import load_and_validate

from tooling import faulty_client_app
from tooling.fault_harness import (
    FAULT_KINDS,
    ClientFault,
    launcher_command,
    small_tmpfs_command,
    write_faulty_app,
)
from tooling.flower_local import parse_assignments
from tracefl.reply import ATTRIBUTION

REPO = Path(__file__).resolve().parent.parent


def test_faulty_app_is_a_valid_flower_app_with_tracefl_config(tmp_path: Path) -> None:
    app = write_faulty_app(tmp_path / "app", [ClientFault("nan", partitions=(1,))])
    config, _ = load_and_validate(app / "pyproject.toml")  # what `flwr run` checks
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {
        "serverapp": "tracefl.server_app:app",
        "clientapp": "faulty_client_app:app",
    }
    repo, _ = load_and_validate(REPO / "pyproject.toml")
    assert (
        config["tool"]["flwr"]["app"]["config"]
        == (repo["tool"]["flwr"]["app"]["config"])
    )
    assert (app / "faulty_client_app.py").read_text() == (
        REPO / "tooling" / "faulty_client_app.py"
    ).read_text()
    assert json.loads((app / "faults.json").read_text()) == {
        "faults": [{"kind": "nan", "partitions": [1], "rounds": None, "seconds": 0.0}]
    }


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "explode"}, "Unknown fault kind 'explode'"),
        ({"kind": "sleep"}, "needs seconds > 0"),
        ({"kind": "raise", "seconds": 3.0}, "other kinds take none"),
    ],
)
def test_bad_faults_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClientFault(**kwargs)


def test_first_matching_fault_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = write_faulty_app(
        tmp_path,
        [
            ClientFault("raise", partitions=(1,), rounds=(2,)),
            ClientFault("nan", partitions=(1, 2)),
            ClientFault("sleep", rounds=(3,), seconds=1.0),
        ],
    )
    monkeypatch.setattr(faulty_client_app, "FAULTS_FILE", app / "faults.json")
    kind = {
        (p, r): (faulty_client_app.matching_fault(p, r) or {}).get("kind")
        for p in range(3)
        for r in range(1, 4)
    }
    assert kind == {
        (0, 1): None,
        (0, 2): None,
        (0, 3): "sleep",
        (1, 1): "nan",
        (1, 2): "raise",
        (1, 3): "nan",
        (2, 1): "nan",
        (2, 2): "nan",
        (2, 3): "nan",
    }


def healthy_reply() -> Message:
    request = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}),
        dst_node_id=7,
        message_type="train",
    )
    state = {"conv.weight": torch.ones(2, 3), "bn.num_batches": torch.tensor(4)}
    content = RecordDict(
        {
            "arrays": ArrayRecord(torch_state_dict=state),
            "metrics": MetricRecord({"num-examples": 5, "train-loss": 1.0}),
            ATTRIBUTION: ConfigRecord({"partition-id": 0, "label-counts": [2, 3, 0]}),
        }
    )
    return Message(content=content, reply_to=request)


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("kind", sorted(set(FAULT_KINDS) - {"raise", "sleep"}))
def test_each_reply_fault_corrupts_what_it_says(kind: str) -> None:
    reply = faulty_client_app._corrupt_reply(healthy_reply(), kind)
    content = reply.content
    arrays = {k: v.numpy() for k, v in content["arrays"].to_torch_state_dict().items()}
    expected = {"conv.weight": np.ones((2, 3), np.float32), "bn.num_batches": 4}
    counts = [2, 3, 0]
    examples = 5
    if kind == "nan":
        expected["conv.weight"] = np.full((2, 3), np.nan, np.float32)
    elif kind == "inf":
        expected["conv.weight"] = np.full((2, 3), np.inf, np.float32)
    elif kind == "wrong-shape":
        expected["conv.weight"] = np.zeros((3, 3), np.float32)
    elif kind == "wrong-dtype":
        expected["conv.weight"] = np.ones((2, 3), np.int64)
    elif kind == "missing-array":
        del expected["conv.weight"]
    elif kind == "extra-array":
        expected["injected.extra"] = np.zeros(3, np.float32)
    elif kind == "zero-examples":
        examples = 0
    elif kind == "negative-label-counts":
        counts = [-1, 3, 0]
    elif kind == "label-counts-length":
        counts = [2, 3, 0, 0]
    assert arrays.keys() == expected.keys()
    for key, want in expected.items():
        got = arrays[key]
        assert got.dtype == np.asarray(want).dtype, key
        np.testing.assert_array_equal(got, want)
    assert content["metrics"]["num-examples"] == examples
    if kind == "missing-attribution":
        assert ATTRIBUTION not in content
    else:
        assert list(content[ATTRIBUTION]["label-counts"]) == counts


WRITER = """
import sys
from pathlib import Path
from tracefl.results_io import write_json
out = Path(sys.argv[1])
write_json(out / "small.json", {"a": 1})
try:
    write_json(out / "big.json", {"blob": "x" * 200_000})
except OSError as err:
    print("write failed:", err, flush=True)
    sys.exit(3)
"""


def test_small_tmpfs_returns_enospc_and_copies_out(tmp_path: Path) -> None:
    mount, copied = tmp_path / "mnt", tmp_path / "copied"
    cmd = small_tmpfs_command(
        [sys.executable, "-c", WRITER, str(mount)],
        mount,
        size_kib=64,
        fill_kib=16,
        copy_out=copied,
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "No space left on device" in proc.stdout
    assert json.loads((copied / "small.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in copied.iterdir()) == ["small.json"]  # no .tmp
    assert list(mount.iterdir()) == []  # the tmpfs was private to the command


def test_small_tmpfs_rejects_a_full_filler(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fill_kib=64"):
        small_tmpfs_command(
            ["true"], tmp_path, size_kib=64, fill_kib=64, copy_out=tmp_path
        )


def test_launcher_command_round_trips_the_run_config() -> None:
    config = {"output-dir": '/x/it\'s "q"', "lr": 0.5, "plots": False}
    cmd = launcher_command(config, "--timeout", "5", num_supernodes=2)
    assert cmd[:5] == [
        sys.executable,
        "-m",
        "tooling.flower_local",
        "--num-supernodes",
        "2",
    ]
    assert parse_assignments(cmd[6:-2:2]) == config
    assert cmd[-2:] == ["--timeout", "5"]
