"""``tracefl explain`` on what a real Flower run saved: the app's own answers again.

One tiny simulation (3 clients, 2 rounds) through Flower's engine keeps every
round's models, the final model and the cumulative store; the command (the
paper method run as the console script, the others in-process to save a few
interpreter starts) must give back the numbers the app wrote to
``inputs.csv`` and ``scores.csv`` for the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tooling.flower_local import LocalSuperLink
from tracefl.attribution import CumulativeUpdates
from tracefl.cli import main
from tracefl.model_store import ModelStore

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
METHODS = ("paper", "update", "loo", "cumulative")
RUN = {
    "num-clients": 3,
    "num-server-rounds": 2,
    "local-epochs": 1,
    "lr": 0.05,
    "max-per-client-data-size": 150,
    "max-server-data-size": 150,
    "provenance-inputs-per-label": 1,
    "methods": ",".join(METHODS),
    "keep-models-rounds": "all",
    "keep-final-model": True,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("explain-e2e")
    out, log = base / "run", base / "run.log"
    with log.open("w") as handle, LocalSuperLink() as link:
        rc = link.run_app(
            {**RUN, "output-dir": str(out)},
            num_supernodes=3,
            stdout=handle,
            timeout=600,
        )
    assert rc == 0, log.read_text()[-4000:]
    return out


def console_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tracefl ...`` as the installed console script would.

    The entry point is read from pyproject's ``[project.scripts]`` and called
    the way pip's generated wrapper calls it (``sys.exit(main())``), so the
    test does not depend on the environment having re-installed the package.
    """
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    module, func = scripts["scripts"]["tracefl"].split(":")
    wrapper = f"import sys; from {module} import {func}; sys.exit({func}())"
    return subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def explained_scores(folder: Path) -> pd.DataFrame:
    """``ranking.csv`` keyed like ``scores.csv``: (input_index, client)."""
    ranking = pd.read_csv(folder / "ranking.csv")
    index = ranking["name"].str.extract(r"^test\[(\d+)\]$")[0].astype(int)
    return ranking.assign(input_index=index, client=ranking["client_id"])


def app_scores(run_dir: Path, method: str, server_round: int) -> pd.DataFrame:
    scores = pd.read_csv(run_dir / "scores.csv")
    return scores[(scores["method"] == method) & (scores["round"] == server_round)]


def test_the_saved_layout_round_trips(run_dir: Path, capsys) -> None:
    store = ModelStore.open(run_dir)
    assert store.rounds() == [1, 2]
    first, second = store.load_round(1), store.load_round(2)
    for key, value in second.previous.items():  # round 2 started from round 1
        assert torch.equal(value, first.aggregate[key])
    for fused in (first, second):
        assert fused.client_ids == ("client-0", "client-1", "client-2")
        for key, value in fused.reconstruct().items():
            torch.testing.assert_close(
                value, fused.aggregate[key].double(), rtol=0, atol=1e-6
            )
    final = store.load_final()
    assert all(torch.equal(final[k], v) for k, v in second.aggregate.items())
    # theta_T = theta_0 + sum_k U_k (+ server) from the saved cumulative store
    updates = CumulativeUpdates.load(run_dir / "cumulative")
    assert updates.rounds == (1, 2)
    for key, value in updates.reconstruct().items():
        torch.testing.assert_close(value, final[key].double(), rtol=0, atol=1e-6)
    assert main(["models", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "final model: final/global.safetensors (round 2)" in text
    assert "round 2: fedavg" in text


def test_explain_gives_back_the_apps_answers(run_dir: Path) -> None:
    inputs = pd.read_csv(run_dir / "inputs.csv").query("round == 2")
    assert len(inputs) >= 2  # the app traced inputs in round 2
    indices = ",".join(str(i) for i in inputs["input_index"])
    common = ["--run-dir", str(run_dir), "--split", "test", "--indices", indices]
    out = run_dir / "explain"
    proc = console_script(
        "explain", *common, "--round", "2", "--out", str(out / "paper")
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    for method in ("update", "loo"):
        args = [*common, "--round", "2", "--method", method, "--no-plot", "-q"]
        assert main(["explain", *args, "--out", str(out / method)]) == 0
    # cumulative: the final model (the default) against the saved U_k
    args = [*common, "--method", "cumulative", "-q", "--out", str(out / "cumulative")]
    assert main(["explain", *args]) == 0

    for method in METHODS:
        ours = explained_scores(out / method).set_index(["input_index", "client"])
        theirs = app_scores(run_dir, method, 2).set_index(["input_index", "client"])
        assert sorted(ours.index) == sorted(theirs.index), method
        # Same models, inputs and code path: the same floats, bit for bit.
        assert (ours.loc[theirs.index, "score"] == theirs["score"]).all(), method
        top = ours[ours["rank"] == 1].reset_index()
        traced = top.set_index("input_index")["client"].str.removeprefix("client-")
        app = inputs.set_index("input_index")
        assert (traced.astype(int) == app.loc[traced.index, f"traced_{method}"]).all()
        # The strict verdict from clients.csv equals the app's, method by method.
        correct = top.set_index("input_index")["strict_correct"].astype(bool)
        assert (correct == app.loc[correct.index, f"correct_{method}"]).all()
    paper = explained_scores(out / "paper").set_index(["input_index", "client"])
    theirs = app_scores(run_dir, "paper", 2).set_index(["input_index", "client"])
    assert (paper.loc[theirs.index, "probability"] == theirs["probability"]).all()
    wide = paper["probability"].unstack("client")
    app = inputs.set_index("input_index")[[f"prob_client-{k}" for k in range(3)]]
    np.testing.assert_allclose(
        wide.loc[app.index].to_numpy(), app.to_numpy(), rtol=0, atol=5e-7
    )
    data = json.loads((out / "cumulative" / "explanation.json").read_text())
    assert data["source"]["model"] == "final"
    assert data["source"]["cumulative_rounds"] == [1, 2]
    assert (out / "cumulative" / "explanation.png").is_file()


def test_report_of_a_run_with_methods(run_dir: Path) -> None:
    methods = pd.read_csv(run_dir / "methods.csv")
    assert sorted(set(methods["method"])) == sorted(METHODS)
    (run_dir / "methods.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "methods.png").stat().st_size > 0
    assert (run_dir / "provenance_round_2.png").is_file()
