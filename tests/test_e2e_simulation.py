"""End-to-end through Flower's real simulation engine (private SuperLink)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest

from tooling.flower_local import LocalSuperLink
from tooling.procfs import Observation, observe
from tracefl.analysis import INPUT_COLUMNS, ROUND_COLUMNS, VOLATILE_COLUMNS

pytestmark = pytest.mark.e2e

TINY = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "local-epochs": 2,
    "lr": 0.05,
    "max-per-client-data-size": 300,
    "max-server-data-size": 300,
    "provenance-inputs-per-label": 1,
    "fraction-evaluate": 1.0,  # exercise the ClientApp's evaluate handler too
}


#: Output folder names that must survive the trip through ``flwr run -c``.
ODD_NAME = 'a it\'s "quoted" \\ ünï'


def run_once(
    out: Path, log: Path, seen: Observation | None = None, **overrides: object
) -> int:
    """One run on a private SuperLink; ``seen`` collects its processes' sockets."""
    config = {**TINY, "output-dir": str(out), **overrides}
    with log.open("w") as handle, LocalSuperLink() as link:
        if seen is None:
            return link.run_app(config, num_supernodes=3, stdout=handle, timeout=600)
        done = threading.Event()
        watcher = threading.Thread(
            target=observe, args=(link.tag, done.is_set, 0.5, seen), daemon=True
        )
        watcher.start()
        try:
            return link.run_app(config, num_supernodes=3, stdout=handle, timeout=600)
        finally:
            done.set()
            watcher.join()


@pytest.fixture(scope="module")
def first_run_seen() -> Observation:
    """Processes and listening sockets of the first of ``two_runs`` (filled by it)."""
    return Observation()


@pytest.fixture(scope="module")
def two_runs(
    tmp_path_factory: pytest.TempPathFactory, first_run_seen: Observation
) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("e2e")
    outs = []
    for name in (ODD_NAME, "b"):
        log = base / f"{len(outs)}.log"
        rc = run_once(base / name, log, None if outs else first_run_seen)
        assert rc == 0, log.read_text()[-4000:]
        outs.append(base / name)
    return outs[0], outs[1]


def test_run_writes_every_output(two_runs: tuple[Path, Path]) -> None:
    out, _ = two_runs
    for name in (
        "rounds.csv",
        "inputs.csv",
        "clients.csv",
        "run.json",
        "accuracy.png",
        "accuracy.pdf",
        "provenance_round_2.png",
    ):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed"
    assert run["config"]["num-clients"] == 3
    # Quotes, a backslash and Unicode in a value survive `flwr run -c`.
    assert out.name == ODD_NAME
    assert run["config"]["output-dir"] == str(out)
    assert {"torch", "flwr", "python"} <= set(run["versions"])
    assert not list(out.glob(".*.tmp"))


def test_hook_saw_every_client_model_each_round(two_runs: tuple[Path, Path]) -> None:
    out, _ = two_runs
    log = (out.parent / "0.log").read_text()
    assert log.count("aggregate_train: Received 3 results and 0 failures") == 2
    assert log.count("aggregate_evaluate: Received 3 results and 0 failures") == 2
    assert "eval-acc" in log
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds.columns) == list(ROUND_COLUMNS)
    assert rounds["round"].tolist() == [1, 2]
    assert rounds["num_participants"].tolist() == [3, 3]
    assert (rounds["status"] == "traced").all()
    clients = pd.read_csv(out / "clients.csv")
    assert clients.groupby("round")["client"].apply(sorted).tolist() == [
        [0, 1, 2],
        [0, 1, 2],
    ]
    inputs = pd.read_csv(out / "inputs.csv")
    methods = json.loads((out / "run.json").read_text())["config"]["methods"].split(",")
    assert len(methods) == 6
    assert list(inputs.columns) == [
        *INPUT_COLUMNS,
        *(f"{kind}_{m}" for m in methods for kind in ("traced", "correct")),
        *(f"prob_client-{i}" for i in range(3)),
    ]
    # The headline columns are the paper method's.
    assert (inputs["traced_client"] == inputs["traced_paper"]).all()
    assert (inputs["true_label"] == inputs["predicted_label"]).all()
    assert set(inputs["traced_client"]) <= {0, 1, 2}
    probs = inputs[[f"prob_client-{i}" for i in range(3)]].sum(axis=1)
    assert probs.between(0.999, 1.001).all()
    # Server accuracy rises above chance after two rounds.
    assert rounds["test_accuracy"].iloc[-1] > 0.2


def test_simulation_listens_on_loopback_only(
    two_runs: tuple[Path, Path], first_run_seen: Observation
) -> None:
    """SuperLink, flwr-simulation and Ray (GCS, raylet, workers, agents)."""
    seen = first_run_seen
    assert seen.not_loopback() == []
    listeners = {
        seen.commands[s.pid].split()[0].rsplit("/", 1)[-1] for s in seen.sockets
    }
    assert len(seen.sockets) >= 5, seen.sockets
    assert {"gcs_server", "raylet"} <= listeners, listeners


def test_same_seed_gives_identical_csvs_apart_from_timing(
    two_runs: tuple[Path, Path],
) -> None:
    a, b = two_runs
    for name in ("rounds.csv", "inputs.csv", "clients.csv"):
        fa, fb = pd.read_csv(a / name), pd.read_csv(b / name)
        keep = [c for c in fa.columns if c not in VOLATILE_COLUMNS]
        assert fa[keep].to_csv(index=False) == fb[keep].to_csv(index=False), name


def test_faulty_mode_with_client_side_dp_clipping(tmp_path: Path) -> None:
    """Faulty-client mode and Flower's client-side clipping mod in a real run."""
    out = tmp_path / "faulty-dp"
    rc = run_once(
        out,
        tmp_path / "run.log",
        **{
            "num-server-rounds": 1,
            "faulty-clients": "0",
            "label-flip": ",".join(f"{i}:0" for i in range(1, 10)),
            "clipping-norm": 1000.0,  # clipping on, never binding: training works
            "noise-multiplier": 0.0,
            "dp-clipping": "client",
        },
    )
    assert rc == 0, (tmp_path / "run.log").read_text()[-4000:]
    log = (tmp_path / "run.log").read_text()
    assert "fixedclipping_mod: parameters are clipped" in log
    rounds = pd.read_csv(out / "rounds.csv")
    row = rounds.iloc[0]
    assert row["clipping_norm"] == 1000.0 and row["noise_multiplier"] == 0.0
    assert str(row["faulty_participants"]) == "0"
    assert row["status"] in {"traced", "no-eligible-inputs"}
    if row["status"] == "traced":
        inputs = pd.read_csv(out / "inputs.csv")
        assert (inputs["mode"] == "faulty").all()
        assert (inputs["predicted_label"] == 0).all()
        assert (inputs["true_label"] != 0).all()
        assert row["faulty_random_baseline"] == pytest.approx(1 / 3)
        assert str(row["feddebug_suspects"]) in {"0", "1", "2"}
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["dp-clipping"] == "client"
