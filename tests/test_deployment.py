"""TraceFL on Flower's deployment engine: a real SuperLink and real SuperNodes.

Each test starts ``flower-superlink`` (deployment mode, insecure, on a free
loopback port) and three ``flower-supernode`` processes with their own
``partition-id``/``num-partitions`` node config, runs the app with
``flwr run --stream`` and checks the result files the ServerApp wrote. Every
process must be gone afterwards.

Run with ``pytest -m e2e tests/test_deployment.py`` (about 4-5 minutes on two
CPU cores).
"""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tooling.flower_local import LocalSuperLink
from tooling.procfs import ListeningSocket, listening_sockets, pid_alive

pytestmark = pytest.mark.e2e

NUM_SUPERNODES = 3
FLOWER_DEFAULT_PORTS = {8000, 9091, 9092, 9093, 9094, 9095}


def tiny_config(out_dir: Path, rounds: int, **extra: Any) -> dict[str, Any]:
    """A run config that finishes in about a minute per round on two CPU cores."""
    return {
        "num-clients": NUM_SUPERNODES,
        "num-server-rounds": rounds,
        "local-epochs": 1,
        "dataset": "mnist",
        "model": "cnn",
        "device": "cpu",
        "max-per-client-data-size": 200,
        "max-server-data-size": 200,
        "provenance-max-inputs": 8,
        "feddebug": False,
        "output-dir": str(out_dir),
        "plots": False,
        **extra,
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def completed_rounds(out_dir: Path) -> int:
    """Rounds recorded so far in ``rounds.csv`` (0 before the first one)."""
    path = out_dir / "rounds.csv"
    try:
        return len(read_csv(path))
    except (FileNotFoundError, csv.Error):
        return 0


def assert_all_stopped(link: LocalSuperLink, pids: set[int]) -> None:
    """Every process the run used is gone, and nothing tagged by ``link`` lives."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if pid_alive(p)], "processes left running"
    assert link.leftover_pids() == []
    assert link.processes == []


def run_and_watch(
    link: LocalSuperLink,
    run_config: dict[str, Any],
    log: Path,
    out_dir: Path,
    kill_after_round: int | None = None,
    kill_partition: int = 2,
    timeout: float = 420.0,
    sockets: set[ListeningSocket] | None = None,
) -> tuple[int, set[int]]:
    """Submit the run, maybe SIGKILL a SuperNode after a round; return rc and PIDs.

    ``sockets`` collects the listening sockets of every process seen.
    """
    seen: set[int] = set()
    with log.open("w") as handle:
        proc = link.launch_app(run_config, stdout=handle)
        deadline = time.monotonic() + timeout
        killed = False
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(link.leftover_pids())
            if sockets is not None:
                sockets.update(listening_sockets(seen))
            if (
                kill_after_round is not None
                and not killed
                and completed_rounds(out_dir) >= kill_after_round
            ):
                link.kill_supernode(kill_partition, signal.SIGKILL)
                killed = True
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
            pytest.fail(f"run did not finish in {timeout:.0f}s; logs: {link.log_dir}")
        if kill_after_round is not None:
            assert killed, "the run ended before the SuperNode could be killed"
    return proc.returncode, seen


@pytest.fixture
def deployment(tmp_path: Path) -> Any:
    """A deployment SuperLink with three online SuperNodes (partitions 0, 1, 2)."""
    link = LocalSuperLink(simulation=False, workdir=tmp_path, log_dir=tmp_path / "logs")
    link.start()
    try:
        assert link.http_port not in FLOWER_DEFAULT_PORTS
        link.start_supernodes(NUM_SUPERNODES)
        link.wait_for_supernodes(NUM_SUPERNODES, timeout=180)
        yield link
    finally:
        link.stop()


def test_three_supernodes_run_to_completion(
    deployment: LocalSuperLink, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    sockets: set[ListeningSocket] = set()
    rc, pids = run_and_watch(
        deployment,
        tiny_config(out_dir, rounds=1),
        tmp_path / "flwr-run.log",
        out_dir,
        sockets=sockets,
    )
    run_log = (tmp_path / "flwr-run.log").read_text()
    assert rc == 0, run_log[-3000:]
    # SuperLink and each SuperNode (its ClientApp API) on loopback only.
    assert len(sockets) >= 1 + NUM_SUPERNODES, sockets
    assert [s for s in sockets if not s.loopback] == []

    run_info = json.loads((out_dir / "run.json").read_text())
    assert run_info["status"] == "completed"
    assert run_info["config"]["num-clients"] == NUM_SUPERNODES

    rounds = read_csv(out_dir / "rounds.csv")
    assert [r["round"] for r in rounds] == ["1"]
    assert rounds[0]["status"] == "traced"
    assert rounds[0]["num_participants"] == "3"
    assert rounds[0]["participants"] == "0;1;2"
    assert int(rounds[0]["num_traced"]) > 0

    inputs = read_csv(out_dir / "inputs.csv")
    assert len(inputs) == int(rounds[0]["num_traced"])
    assert {r["traced_client"] for r in inputs} <= {"0", "1", "2"}
    for row in inputs:
        probs = [float(row[f"prob_client-{i}"]) for i in range(NUM_SUPERNODES)]
        assert sum(probs) == pytest.approx(1.0, abs=1e-3)

    clients = read_csv(out_dir / "clients.csv")
    assert sorted(r["client"] for r in clients) == ["0", "1", "2"]
    assert all(int(r["num_examples"]) > 0 for r in clients)

    # Each client trained in its own SuperNode process.
    for i in range(NUM_SUPERNODES):
        log = (deployment.log_dir / f"supernode-{i}.log").read_text()
        assert "Starting Flower SuperNode" in log

    deployment.stop()
    assert_all_stopped(deployment, pids)


def test_killed_supernode_round_completes_with_survivors(
    deployment: LocalSuperLink, tmp_path: Path
) -> None:
    """SIGKILL one SuperNode after round 1: round 2 aggregates and traces the other two.

    The dead node was sampled for round 2 (the SuperLink still considers it
    online); once its heartbeats stop the SuperLink answers its message with a
    "node unavailable" error reply and FedAvg aggregates the two real replies.
    """
    out_dir = tmp_path / "out"
    config = tiny_config(
        out_dir,
        rounds=2,
        **{"min-train-nodes": 2, "min-available-nodes": 2, "round-timeout": 300.0},
    )
    rc, pids = run_and_watch(
        deployment,
        config,
        tmp_path / "flwr-run.log",
        out_dir,
        kill_after_round=1,
        kill_partition=2,
    )
    run_log = (tmp_path / "flwr-run.log").read_text()
    assert rc == 0, run_log[-3000:]
    assert deployment.supernodes[2].poll() is not None
    assert "Received 3 results and 0 failures" in run_log
    assert "Received 2 results" in run_log, run_log
    run_info = json.loads((out_dir / "run.json").read_text())
    assert run_info["status"] == "completed"

    rounds = {r["round"]: r for r in read_csv(out_dir / "rounds.csv")}
    assert rounds["1"]["num_participants"] == "3"
    assert rounds["1"]["participants"] == "0;1;2"
    assert rounds["2"]["num_participants"] == "2"
    assert rounds["2"]["participants"] == "0;1"
    assert rounds["2"]["status"] == "traced"
    # The dead node may or may not be sampled in round 2 (whether its heartbeats
    # have expired by then is Flower's timing); if it was, rounds.csv and
    # clients.csv must say what became of it.
    sampled = int(rounds["2"]["sampled"])
    assert sampled in (2, 3)
    # A sampled dead node is answered by the SuperLink ("node unavailable"),
    # long before round-timeout: a failure of that node, not a timeout.
    assert rounds["2"]["timed_out"] == "0"
    missing = int(rounds["2"]["failed"])
    assert sampled == 2 + missing
    assert missing == 0 or "Node Unavailable" in rounds["2"]["problems"]

    round2_inputs = [r for r in read_csv(out_dir / "inputs.csv") if r["round"] == "2"]
    assert round2_inputs
    assert {r["traced_client"] for r in round2_inputs} <= {"0", "1"}
    assert all(r["prob_client-2"] == "" for r in round2_inputs)

    clients = [r for r in read_csv(out_dir / "clients.csv") if r["round"] == "2"]
    assert sorted(r["client"] for r in clients if r["status"] == "fused") == ["0", "1"]
    lost = [r for r in clients if r["status"] == "failed"]
    assert len(lost) == missing
    assert all(r["reason"] for r in lost)
    assert len(clients) == sampled

    deployment.stop()
    assert_all_stopped(deployment, pids)


def test_stop_cleans_up_without_a_run(tmp_path: Path) -> None:
    """Stopping right after start leaves no SuperLink/SuperNode/SuperExec behind."""
    link = LocalSuperLink(simulation=False, workdir=tmp_path, log_dir=tmp_path / "logs")
    with link:
        procs = link.start_supernodes(2)
        time.sleep(3)
        pids = {p.pid for p in procs} | set(link.leftover_pids())
        assert len(pids) >= 3
    assert_all_stopped(link, pids)
    assert all(p.returncode is not None for p in procs)


def test_kill_supernode_rejected_in_simulation(tmp_path: Path) -> None:
    link = LocalSuperLink(simulation=True, workdir=tmp_path)
    with pytest.raises(RuntimeError, match="deployment"):
        link.start_supernode(0, 1)
