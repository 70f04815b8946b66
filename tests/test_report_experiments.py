"""Experiment configs (conf/): Flower accepts them, grids expand, resume is honest."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from flwr.common.config import flatten_dict, fuse_dicts, parse_config_args

from tooling import experiments as ex
from tracefl.config import FUSIONS, parse_run_config

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = REPO / "pyproject.toml"
#: Not Flower run configs: experiment grids and the retraining study's scenarios,
#: read by tooling.experiments and tooling.retraining.
TOOLING_SUFFIXES = (".grid.toml", ".truth.toml")
RUN_CONFIGS = sorted(
    p for p in (REPO / "conf").rglob("*.toml") if not p.name.endswith(TOOLING_SUFFIXES)
)
EXPERIMENTS = ex.experiment_names()


def test_every_paper_artifact_has_a_config() -> None:
    assert set(EXPERIMENTS) == {
        "fig2",
        "fig2-text",
        "fig3",
        "table1",
        "dp",
        "table3",
        "ablation",
        "backdoor",  # beyond the paper: adversarial clients (issue 18)
        "backdoor-text",
        "gaming",
        "methods",
        "methods-faulty",
        "methods-resnet",
        "aggregators",
    }
    for name in EXPERIMENTS:
        assert (REPO / "conf" / f"{name}.toml").is_file()
        assert (REPO / "conf" / "paper" / f"{name}.toml").is_file()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_flwr_run_accepts_each_run_config_file(path: Path) -> None:
    """What ``flwr run . --run-config <file>`` does with it in flwr 1.42."""
    overrides = parse_config_args([str(path)])  # CLI side: read and flatten
    defaults = flatten_dict(
        tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    )
    fused = fuse_dicts(defaults, overrides, check_keys=True)  # SuperLink side
    parse_run_config(fused)  # the ServerApp's validation


def test_flwr_rejects_a_table_in_a_run_config(tmp_path: Path) -> None:
    """Why grids live in a separate .grid.toml: Flower flattens tables."""
    path = tmp_path / "x.toml"
    path.write_text('dataset = "mnist"\n[grid]\ndirichlet-alpha = 0.1\n')
    defaults = flatten_dict(
        tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    )
    with pytest.raises(ValueError, match="grid.dirichlet-alpha"):
        fuse_dicts(defaults, parse_config_args([str(path)]), check_keys=True)
    with pytest.raises(ex.GridError, match=r"table \[grid\]"):
        ex.read_run_config_file(path)


@pytest.mark.parametrize("scale", ex.SCALES)
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_grid_expands_to_valid_unique_runs(name: str, scale: str) -> None:
    grid = ex.load_grid(name, scale)
    runs = ex.expand(grid)
    assert len({r.name for r in runs}) == len(runs) >= 2
    for run in runs:
        parse_run_config(run.overrides)


COMMITTED = [
    d.name for d in sorted((REPO / "results").iterdir()) if d.name in EXPERIMENTS
]


@pytest.mark.parametrize("name", COMMITTED)
def test_configs_reproduce_the_committed_results(name: str) -> None:
    """The committed results were made by exactly these configs: all skipped."""
    grid = ex.load_grid(name)
    plans = ex.plan_runs(
        ex.expand(grid),
        REPO / "results" / name,
        seed=None,
        data_dir="",
        force=False,
        rerun_changed=False,
    )
    assert [(p.action, p.changes) for p in plans] == [("skip", ())] * len(plans)


def test_grid_axes_runs_and_names() -> None:
    dp = ex.expand(ex.load_grid("dp"))
    assert [r.name for r in dp][:2] == ["noise-0.0-clip-0.0", "noise-0.003-clip-15.0"]
    assert dp[1].overrides["clipping-norm"] == 15.0
    ablation = ex.expand(ex.load_grid("ablation"))
    assert [r.name for r in ablation] == [
        "pk-on-beta-on",
        "pk-on-beta-off",
        "pk-off-beta-on",
        "pk-off-beta-off",
    ]
    text = ex.expand(ex.load_grid("fig2-text"))
    lr = {
        (r.overrides["dataset"], r.overrides["model"]): r.overrides["lr"] for r in text
    }
    assert lr[("yahoo_answers_topics", "gpt2-tiny")] == 5e-4
    assert lr[("dbpedia_14", "minilm")] == 5e-5
    table3 = ex.expand(ex.load_grid("table3", "paper"))
    assert [r.overrides["num-clients"] for r in table3] == [200, 400, 600, 800, 1000]
    assert all(
        r.overrides["num-clients"] * r.overrides["fraction-train"] == pytest.approx(10)
        for r in table3
    )


def test_aggregator_grid_has_a_clean_and_a_faulty_run_per_fusion() -> None:
    runs = {r.name: r.overrides for r in ex.expand(ex.load_grid("aggregators"))}
    assert sorted(runs) == sorted(
        f"{f}-{kind}" for f in FUSIONS for kind in ("clean", "faulty")
    )
    for name, config in runs.items():
        cfg = parse_run_config(config)
        assert cfg.fusion == name.rsplit("-", 1)[0]
        assert cfg.faulty_client_ids == ((0,) if name.endswith("faulty") else ())
        assert cfg.num_malicious_nodes == 1


def test_command_line_changes_of_a_grid() -> None:
    fig2 = ex.load_grid("fig2")
    names = [r.name for r in ex.expand(ex.with_value_list(fig2, "model", ["cnn"]))]
    assert names == ["mnist-cnn"]
    text = ex.with_value_list(ex.load_grid("fig2-text"), "model", ["minilm", "org/x"])
    runs = ex.expand(text)
    assert {r.name for r in runs} >= {"dbpedia_14-minilm", "dbpedia_14-org_x"}
    fig3 = ex.with_value_list(ex.load_grid("fig3"), "dataset", ["mnist", "cifar10"])
    assert {r.name for r in ex.expand(fig3)} >= {"cifar10-alpha-0.1", "mnist-alpha-1.0"}
    one = ex.expand(ex.with_value_list(ex.load_grid("fig3"), "dataset", ["cifar10"]))
    assert {r.overrides["dataset"] for r in one} == {"cifar10"}
    rounds = ex.expand(fig2, {"num-server-rounds": 7})
    assert {r.overrides["num-server-rounds"] for r in rounds} == {7}
    with pytest.raises(ex.GridError, match="-c dirichlet-alpha: the grid of 'fig3'"):
        ex.expand(ex.load_grid("fig3"), {"dirichlet-alpha": 0.5})


def write_grid(conf: Path, grid: str, run_config: str, name: str = "tiny") -> None:
    conf.mkdir(parents=True, exist_ok=True)
    (conf / f"{name}.toml").write_text(run_config)
    (conf / f"{name}.grid.toml").write_text(grid)


REDUCED = '[scales.reduced]\nrun-config = "tiny.toml"\n'


def test_malformed_grids_are_named(tmp_path: Path) -> None:
    base = 'dataset = "mnist"\n'
    cases = [
        ('name = "x"\n' + REDUCED + "foo = 1\n", "foo"),
        ('name = "x"\n[scales.paper]\nrun-config = "tiny.toml"\n', "scales.reduced"),
        ('name = "x-{seed}"\naxes = {seedz = [1]}\n' + REDUCED, "axis 'seedz'"),
        ('name = "x"\naxes = {seed = []}\n' + REDUCED, "non-empty list"),
        ('name = "x"\naxes = {seed = [1, 2]}\n' + REDUCED, "must name every swept"),
        ('name = "{lr}"\naxes = {seed = [1]}\n' + REDUCED, "no value"),
        ('name = "x"\nruns = [{lr = 0.1}]\naxes = {lr = [1.0]}\n' + REDUCED, "both"),
    ]
    for i, (grid, message) in enumerate(cases):
        write_grid(tmp_path / str(i), grid, base)
        with pytest.raises(ex.GridError, match=message):
            ex.expand(ex.load_grid("tiny", conf_dir=tmp_path / str(i)))
    write_grid(tmp_path / "u", 'name = "x"\n' + REDUCED, "num-clientz = 3\n")
    with pytest.raises(ex.GridError, match="unknown run-config key 'num-clientz'"):
        ex.load_grid("tiny", conf_dir=tmp_path / "u")
    with pytest.raises(ex.GridError, match="no experiment 'nope'"):
        ex.load_grid("nope", conf_dir=tmp_path / "u")


# ------------------------------------------------------------------ resume


def completed_run(exp_dir: Path, run: ex.Run, config: dict) -> None:
    out = exp_dir / run.name
    out.mkdir(parents=True)
    stored = parse_run_config(config).to_run_config()
    (out / "run.json").write_text(json.dumps({"config": stored, "status": "completed"}))


def plan(exp_dir: Path, runs, **kwargs):
    return ex.plan_runs(
        runs,
        exp_dir,
        seed=kwargs.pop("seed", None),
        data_dir="",
        force=kwargs.pop("force", False),
        rerun_changed=kwargs.pop("rerun_changed", False),
    )


def test_resume_skips_only_unchanged_runs(tmp_path: Path) -> None:
    grid = ex.load_grid("fig3")
    runs = ex.expand(grid)
    first = plan(tmp_path, runs)
    assert [p.action for p in first] == ["run"] * 5
    completed_run(tmp_path, runs[0], first[0].config)
    # An older run.json without newer keys counts as their defaults.
    old = tmp_path / runs[1].name
    completed_run(tmp_path, runs[1], first[1].config)
    info = json.loads((old / "run.json").read_text())
    del info["config"]["keep-models-rounds"]
    info["config"]["output-dir"] = "/elsewhere/results/fig3/alpha-0.3"  # moved clone
    (old / "run.json").write_text(json.dumps(info))
    (tmp_path / runs[2].name).mkdir()
    (tmp_path / runs[2].name / "run.json").write_text(json.dumps({"status": "failed"}))
    actions = [p.action for p in plan(tmp_path, runs)]
    assert actions == ["skip", "skip", "run", "run", "run"]

    changed = ex.expand(grid, {"num-server-rounds": 5})
    plans = plan(tmp_path, changed)
    assert [p.action for p in plans[:2]] == ["refuse", "refuse"]
    assert plans[0].changes == ("num-server-rounds: 3 -> 5",)
    message = ex.refusal_message(plans, tmp_path)
    assert "alpha-0.1:" in message and "num-server-rounds: 3 -> 5" in message
    assert "--rerun-changed" in message
    assert [p.action for p in plan(tmp_path, changed, rerun_changed=True)][:2] == [
        "run",
        "run",
    ]
    assert [p.action for p in plan(tmp_path, runs, seed=7)][:2] == ["refuse", "refuse"]
    assert {p.action for p in plan(tmp_path, runs, force=True)} == {"run"}


def test_main_refuses_a_changed_config_before_running(tmp_path: Path, capsys) -> None:
    runs = ex.expand(ex.load_grid("fig3"))
    plans = plan(tmp_path / "fig3", runs)
    for p in plans:
        completed_run(tmp_path / "fig3", p.run, p.config)
    rc = ex.main(["fig3", "--results", str(tmp_path), "--rounds", "9", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "num-server-rounds: 3 -> 9" in err and "--rerun-changed" in err
    assert ex.main(["fig3", "--results", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("skip") == 5


# ---------------------------------------------------------------- progress


def test_round_lines_and_following_rounds_csv(tmp_path: Path, capsys) -> None:
    row = {
        "round": 2,
        "status": "traced",
        "test_accuracy": 0.716,
        "paper_accuracy": 1.0,
        "paper_random_baseline": 0.8,
        "strict_accuracy": 0.4,
        "strict_random_baseline": 0.1,
        "round_seconds": 12.3,
    }
    line = ex.round_line("[fig3/alpha-0.1]", row, 3)
    assert line == (
        "[fig3/alpha-0.1] round 2/3: test acc 71.6%, traced | paper 100.0% (random "
        "80.0%), strict 40.0% (random 10.0%) | 12s"
    )
    faulty = {
        **row,
        "faulty_accuracy": 1.0,
        "faulty_random_baseline": 0.1,
        "feddebug_accuracy": "n/a",
    }
    assert "faulty client found 100.0% (random 10.0%), FedDebug n/a" in ex.round_line(
        "p", faulty, 3
    )
    follower = ex.RoundFollower(tmp_path, "[x]", 3, show=True)
    follower.poll()  # no rounds.csv yet
    pd.DataFrame([{**row, "round": 1}]).to_csv(tmp_path / "rounds.csv", index=False)
    follower.poll()
    follower.poll()  # unchanged file: nothing new
    pd.DataFrame([{**row, "round": 1}, row]).to_csv(
        tmp_path / "rounds.csv", index=False
    )
    import os

    os.utime(tmp_path / "rounds.csv", (1, 1))  # a different mtime
    follower.close()
    out = capsys.readouterr().out
    assert out.count("[x] round 1/3") == 1 and out.count("[x] round 2/3") == 1
    quiet = ex.RoundFollower(tmp_path, "[q]", 3, show=False)
    quiet.close()
    assert "[q]" not in capsys.readouterr().out


# --------------------------------------------------------------------- e2e


TINY = """
dataset = "mnist"
model = "cnn"
num-clients = 2
num-server-rounds = 1
min-train-nodes = 2
min-available-nodes = 2
local-epochs = 1
max-per-client-data-size = 64
max-server-data-size = 64
provenance-max-inputs = 4
plots = false
"""


@pytest.mark.e2e
def test_a_grid_runs_through_flower_with_progress(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "conf"
    write_grid(
        conf,
        'report = "fig3"\nname = "alpha-{dirichlet-alpha}"\n'
        "axes = { dirichlet-alpha = [0.5] }\n"
        '[scales.reduced]\nrun-config = "tiny.toml"\n',
        TINY,
    )
    results = tmp_path / "results"
    args = ["tiny", "--conf-dir", str(conf), "--results", str(results), "--no-static"]
    assert ex.main(args) == 0
    out = capsys.readouterr().out
    assert "[tiny/alpha-0.5] round 1/1: test acc" in out
    run = results / "tiny" / "alpha-0.5"
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    meta = json.loads((results / "tiny" / "experiment.json").read_text())
    assert meta["report"] == "fig3" and meta["runs"] == ["alpha-0.5"]
    assert meta["grid"] == str(conf / "tiny.grid.toml")
    assert (results / "tiny" / "fig3_alpha.png").is_file()
    # Ray's FutureWarning is answered with the setting it asks for.
    log = (results / "tiny" / "alpha-0.5.log").read_text()
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" not in log

    stamp = (run / "run.json").stat().st_mtime_ns
    assert ex.main([*args, "-q"]) == 0  # unchanged: skipped, nothing re-run
    assert (run / "run.json").stat().st_mtime_ns == stamp
    (conf / "tiny.toml").write_text(
        TINY.replace("local-epochs = 1", "local-epochs = 2")
    )
    assert ex.main([*args, "-q"]) == 2
    assert "local-epochs: 1 -> 2" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "results")
