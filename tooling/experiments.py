"""Run an experiment grid from its config files, then rebuild its tables and figures.

An experiment is two TOML files in ``conf/``:

``conf/<name>.toml``
    A Flower run config (flat ``key = value`` lines, the keys of
    ``[tool.flwr.app.config]``): the settings every run of the experiment
    shares. ``flwr run . --run-config conf/<name>.toml`` runs one point.
``conf/<name>.grid.toml``
    The grid: ``report`` (figure set of :data:`tracefl.report.FIGURES`),
    ``name`` (run directory template, ``{key}`` = that run's value), ``axes``
    (a cartesian product: key -> list of values) and ``runs`` (a list of
    tables, each a group of settings; crossed with the axes), and per scale
    (``[scales.reduced]``, ``[scales.paper]``) the ``run-config`` file and
    optionally its own ``axes``/``runs``.

Each run is ``pyproject defaults < run-config < axes/runs values < -c
overrides`` and goes through the real Flower simulation engine on a private
local SuperLink (:mod:`tooling.flower_local`), into
``results/<name>[-paper]/<run>/``. A run whose ``run.json`` says it completed
is skipped only if its stored config equals the one it would run now; a
changed config is refused with the differing keys (``--rerun-changed`` re-runs
those runs, ``--force`` every run). Progress: a bar over runs and one over the
running run's rounds (read from its ``rounds.csv``), and one line per round.

    python -m tooling.experiments fig3              # run, then summarise
    python -m tooling.experiments fig3 --plot-only  # rebuild tables/figures
    python -m tooling.experiments fig3 --dry-run    # list the runs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from tooling.flower_local import REPO_ROOT as REPO
from tooling.flower_local import (
    LocalSuperLink,
    interrupt_as_exit,
    run_json_path,
    stop_process,
)
from tooling.run_config_args import parse_assignments
from tracefl import report
from tracefl.config import ConfigError, parse_run_config, run_config_keys
from tracefl.report_tables import markdown_table
from tracefl.run_status import exit_code, read_run_status, wait_for_final_status

CONF_DIR = REPO / "conf"
SCALES = ("reduced", "paper")
GRID_KEYS = {"report", "name", "axes", "runs", "scales", "description"}
SCALE_KEYS = {"run-config", "axes", "runs"}
#: Keys that say where a run writes, not what it computes (not compared on resume).
LOCATION_KEYS = ("output-dir",)
#: Ray asks for this setting to stop its FutureWarning (its future default: do
#: not hide accelerators from actors that reserved none).
QUIET_ENV = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


class GridError(ValueError):
    """A malformed experiment config; the message names the file and key."""


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Run:
    """One run of a grid: its directory name and run-config overrides."""

    name: str
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Grid:
    """An experiment's grid at one scale, as read from ``conf/``."""

    experiment: str
    scale: str
    grid_path: Path
    report: str
    name_template: str
    run_config_path: Path
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    runs: list[dict[str, Any]]

    @property
    def results_name(self) -> str:
        """The experiment directory under ``results/``."""
        return (
            self.experiment if self.scale == "reduced" else f"{self.experiment}-paper"
        )

    @property
    def swept_keys(self) -> set[str]:
        """Keys the grid varies."""
        return set(self.axes) | {k for run in self.runs for k in run}


def experiment_names(conf_dir: Path = CONF_DIR) -> list[str]:
    """Experiments defined in ``conf_dir`` (one per ``<name>.grid.toml``)."""
    return sorted(
        p.name.removesuffix(".grid.toml") for p in conf_dir.glob("*.grid.toml")
    )


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, naming it on a syntax error."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise GridError(f"{path}: no such file") from err
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: invalid TOML: {err}") from err


def read_run_config_file(path: Path) -> dict[str, Any]:
    """A flat Flower run-config file, checked as ``flwr run --run-config`` would.

    Flower flattens tables into dotted keys and rejects keys that are not in
    ``[tool.flwr.app.config]``, so the file must be flat and use known keys.
    """
    data = read_toml(path)
    known = set(run_config_keys())
    for key, value in data.items():
        if isinstance(value, dict):
            raise GridError(
                f"{path}: table [{key}] - a Flower run config is flat (key = value "
                "lines only); put grids in the .grid.toml file"
            )
        if key not in known:
            raise GridError(f"{path}: unknown run-config key '{key}'")
    return data


def load_grid(
    experiment: str, scale: str = "reduced", conf_dir: Path = CONF_DIR
) -> Grid:
    """Read ``conf_dir/<experiment>.grid.toml`` and its run config for ``scale``."""
    path = conf_dir / f"{experiment}.grid.toml"
    if not path.is_file():
        known = ", ".join(experiment_names(conf_dir)) or "none"
        raise GridError(
            f"no experiment '{experiment}' ({path} missing); known: {known}"
        )
    data = read_toml(path)
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise GridError(
            f"{path}: unknown key(s) {sorted(unknown)}; allowed {sorted(GRID_KEYS)}"
        )
    scales = data.get("scales", {})
    if scale not in scales:
        raise GridError(f"{path}: no [scales.{scale}] table (scales: {sorted(scales)})")
    scale_table = scales[scale]
    unknown = set(scale_table) - SCALE_KEYS
    if unknown:
        raise GridError(
            f"{path}: [scales.{scale}] has unknown key(s) {sorted(unknown)}; "
            f"allowed {sorted(SCALE_KEYS)}"
        )
    if "run-config" not in scale_table:
        raise GridError(f"{path}: [scales.{scale}] needs run-config = '<file>.toml'")
    run_config_path = (path.parent / scale_table["run-config"]).resolve()
    axes = scale_table.get("axes", data.get("axes", {}))
    runs = scale_table.get("runs", data.get("runs", [{}]))
    known = set(run_config_keys())
    if not isinstance(axes, dict):
        raise GridError(f"{path}: 'axes' must be a table of key = [values]")
    for key, values in axes.items():
        if key not in known:
            raise GridError(f"{path}: axis '{key}' is not a run-config key")
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: axis '{key}' must be a non-empty list of values")
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise GridError(f"{path}: 'runs' must be a list of tables")
    for run in runs:
        for key in run:
            if key not in known:
                raise GridError(
                    f"{path}: runs entry key '{key}' is not a run-config key"
                )
            if key in axes:
                raise GridError(f"{path}: '{key}' is both an axis and set in runs")
    template = data.get("name")
    if not isinstance(template, str) or not template:
        raise GridError(f"{path}: needs name = '<run directory template>'")
    return Grid(
        experiment=experiment,
        scale=scale,
        grid_path=path.resolve(),
        report=str(data.get("report", experiment)),
        name_template=template,
        run_config_path=run_config_path,
        base=read_run_config_file(run_config_path),
        axes={k: list(v) for k, v in axes.items()},
        runs=[dict(r) for r in runs] or [{}],
    )


def render_name(template: str, values: Mapping[str, Any]) -> str:
    """A run directory name: ``{key}`` replaced by the value (bools: on/off)."""
    out = template
    for key, value in values.items():
        text = (
            ("on" if value else "off")
            if isinstance(value, bool)
            else str(value).replace("/", "_")
        )
        out = out.replace("{" + key + "}", text)
    if "{" in out:
        raise GridError(
            f"run name template '{template}' names a key with no value: {out}"
        )
    return out


def expand(grid: Grid, overrides: Mapping[str, Any] | None = None) -> list[Run]:
    """Every run of ``grid``: base < axis values < runs entry < ``overrides``.

    Raises
    ------
    GridError
        An override of a swept key, or two runs with the same name.

    """
    overrides = dict(overrides or {})
    clash = sorted(set(overrides) & grid.swept_keys)
    if clash:
        raise GridError(
            f"-c {clash[0]}: the grid of '{grid.experiment}' sweeps this key "
            f"({grid.run_config_path.name} / {grid.experiment}.grid.toml); edit the "
            "grid or use --datasets/--models"
        )
    keys = list(grid.axes)
    runs: list[Run] = []
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        for entry in grid.runs:
            values = {**dict(zip(keys, combo, strict=True)), **entry}
            config = {**grid.base, **values, **overrides}
            runs.append(Run(render_name(grid.name_template, config), config))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GridError(
            f"run name '{dupes[0]}' repeats: the template '{grid.name_template}' must "
            "name every swept key"
        )
    return runs


def with_value_list(grid: Grid, key: str, values: Sequence[Any]) -> Grid:
    """``grid`` with ``key`` taking ``values`` (``--datasets``/``--models``).

    An axis is replaced; ``runs`` entries setting the key are kept for the
    listed values (others get a bare entry); otherwise one value overrides the
    base and several become a new axis (the run name gains ``-{key}``).
    """
    values = list(values)
    if key in grid.axes:
        return _replace(grid, axes={**grid.axes, key: values})
    if any(key in run for run in grid.runs):
        kept = [run for run in grid.runs if run.get(key) in values]
        present = {run.get(key) for run in kept}
        kept += [{key: v} for v in values if v not in present]
        return _replace(grid, runs=kept)
    if len(values) == 1:
        return _replace(grid, base={**grid.base, key: values[0]})
    template = grid.name_template
    if "{" + key + "}" not in template:
        template = "{" + key + "}-" + template
    return _replace(grid, axes={key: values, **grid.axes}, name_template=template)


def _replace(grid: Grid, **changes: Any) -> Grid:
    import dataclasses

    return dataclasses.replace(grid, **changes)


# ------------------------------------------------------------------ resume


def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's fully resolved config without where it was written."""
    resolved = parse_run_config(
        {k: v for k, v in config.items() if k not in LOCATION_KEYS}
    ).to_run_config()
    return {k: v for k, v in resolved.items() if k not in LOCATION_KEYS}


def config_changes(stored: Mapping[str, Any], planned: Mapping[str, Any]) -> list[str]:
    """``key: stored -> planned`` for every key whose value differs.

    Keys absent from an older ``run.json`` take their default. A stored config
    that no longer parses is reported as one change.
    """
    try:
        old = comparable(stored)
    except ConfigError as err:
        return [f"stored config no longer valid: {err}"]
    new = comparable(planned)
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def stored_run(out_dir: Path) -> dict[str, Any] | None:
    """The ``run.json`` of a run directory, or ``None``."""
    path = out_dir / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


@dataclass(frozen=True)
class Plan:
    """What to do with each run: ``run``, ``skip`` (unchanged) or ``refuse``."""

    action: str
    run: Run
    config: dict[str, Any]
    changes: tuple[str, ...] = ()


def plan_runs(
    runs: Sequence[Run],
    exp_dir: Path,
    *,
    seed: int | None,
    data_dir: str,
    force: bool,
    rerun_changed: bool,
) -> list[Plan]:
    """Decide per run, comparing a completed run's stored config with the plan."""
    plans = []
    for run in runs:
        out = exp_dir / run.name
        config = {
            **data_dir_for(data_dir, str(run.overrides.get("dataset", "mnist"))),
            **run.overrides,
            "run-name": run.name,
            "output-dir": str(out),
        }
        if seed is not None:
            config["seed"] = seed
        parse_run_config(config)  # the whole grid is valid before anything runs
        info = stored_run(out)
        if force or info is None or not read_run_status(out).completed:
            plans.append(Plan("run", run, config))
            continue
        changes = tuple(config_changes(info.get("config", {}), config))
        if not changes:
            plans.append(Plan("skip", run, config))
        elif rerun_changed:
            plans.append(Plan("run", run, config, changes))
        else:
            plans.append(Plan("refuse", run, config, changes))
    return plans


def refusal_message(plans: Sequence[Plan], exp_dir: Path) -> str:
    """Why changed runs are not resumed, and what to do."""
    lines = [
        f"error: completed runs in {exp_dir} were made with a different config "
        "than the one they would run now:"
    ]
    for plan in plans:
        if plan.action == "refuse":
            lines.append(f"  {plan.run.name}:")
            lines += [f"    {change}" for change in plan.changes]
    lines.append(
        "Re-run them with --rerun-changed (or every run with --force), or write "
        "to another --results directory."
    )
    return "\n".join(lines)


def data_dir_for(data_dir: str, dataset: str) -> dict[str, str]:
    """``data-dir`` for one dataset: ``<data-dir>/<dataset>`` when that exists."""
    if not data_dir:
        return {}
    root = Path(data_dir).expanduser().resolve()
    return {"data-dir": str(root / dataset if (root / dataset).is_dir() else root)}


# ----------------------------------------------------------------- progress


def round_line(prefix: str, row: Mapping[str, Any], num_rounds: int) -> str:
    """One screen line for a finished round (read from ``rounds.csv``)."""

    def pct(key: str) -> str:
        value = pd.to_numeric(pd.Series([row.get(key)]), errors="coerce").iloc[0]
        return "n/a" if pd.isna(value) else f"{100 * value:.1f}%"

    text = (
        f"{prefix} round {int(row['round'])}/{num_rounds}: "
        f"test acc {pct('test_accuracy')}, {row.get('status')}"
    )
    if row.get("status") == "traced":
        if not pd.isna(pd.to_numeric(row.get("faulty_accuracy"), errors="coerce")):
            text += (
                f" | faulty client found {pct('faulty_accuracy')} "
                f"(random {pct('faulty_random_baseline')}), "
                f"FedDebug {pct('feddebug_accuracy')}"
            )
        else:
            text += (
                f" | paper {pct('paper_accuracy')} "
                f"(random {pct('paper_random_baseline')}), "
                f"strict {pct('strict_accuracy')} "
                f"(random {pct('strict_random_baseline')})"
            )
    seconds = pd.to_numeric(row.get("round_seconds"), errors="coerce")
    if not pd.isna(seconds):
        text += f" | {float(seconds):.0f}s"
    return text


class RoundFollower:
    """Follows a running run's ``rounds.csv``: a bar over rounds, a line per round."""

    def __init__(self, out_dir: Path, prefix: str, num_rounds: int, show: bool) -> None:
        self.path = out_dir / "rounds.csv"
        self.prefix = prefix
        self.num_rounds = num_rounds
        self.show = show
        self.seen = 0
        self.mtime = 0.0
        self.bar = tqdm(
            total=num_rounds,
            desc=prefix,
            unit="round",
            position=1,
            leave=False,
            disable=None if show else True,
        )

    def poll(self) -> None:
        """Print and count the rounds finished since the last poll."""
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        try:
            rows = pd.read_csv(self.path).to_dict("records")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
            return
        for row in rows[self.seen :]:
            if self.show:
                tqdm.write(round_line(self.prefix, row, self.num_rounds))
            self.bar.update(1)
        self.seen = max(self.seen, len(rows))

    def close(self) -> None:
        """Read what is left, then remove the bar."""
        self.poll()
        self.bar.close()


# --------------------------------------------------------------------- run


def run_one(
    link: LocalSuperLink, plan: Plan, exp_dir: Path, prefix: str, show: bool
) -> int:
    """Run one planned run on ``link``; its Flower output goes to ``<run>.log``."""
    out = Path(plan.config["output-dir"])
    if out.exists():
        shutil.rmtree(out)
    log_path = exp_dir / f"{plan.run.name}.log"
    cfg = parse_run_config(plan.config)
    num_rounds = cfg.num_server_rounds
    launched = datetime.now(UTC)
    follower = RoundFollower(out, prefix, num_rounds, show)
    with log_path.open("w") as log:
        proc = link.launch_app(
            plan.config,
            num_supernodes=cfg.num_clients or 10,
            stdout=log,
        )
        try:
            while proc.poll() is None:
                follower.poll()
                time.sleep(1.0)
            rc = proc.returncode
        finally:
            stop_process(proc)
            if proc in link.processes:
                link.processes.remove(proc)
            follower.close()
    status = wait_for_final_status(
        run_json_path(plan.config, link.workdir), 30.0, started_after=launched
    )
    if not status.completed:
        print(f"[{plan.run.name}] {status.describe()}; log: {log_path}", flush=True)
    return rc or exit_code(status)


def run_grid(
    grid: Grid,
    plans: Sequence[Plan],
    exp_dir: Path,
    *,
    show: bool,
) -> None:
    """Run every planned run of ``grid`` on one private SuperLink."""
    todo = [p for p in plans if p.action == "run"]
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    write_experiment_json(grid, plans, exp_dir)
    bar = tqdm(
        total=len(plans),
        desc=grid.results_name,
        unit="run",
        position=0,
        disable=None if show else True,
    )
    for plan in plans:
        if plan.action == "skip":
            bar.update(1)
            if show:
                tqdm.write(f"[{grid.results_name}] {plan.run.name}: already completed")
    if not todo:
        bar.close()
        return
    with interrupt_as_exit(), LocalSuperLink(simulation=True) as link:
        for plan in todo:
            prefix = f"[{grid.results_name}/{plan.run.name}]"
            if show:
                why = " (config changed)" if plan.changes else ""
                tqdm.write(f"{prefix} running{why}; log {exp_dir / plan.run.name}.log")
            start = time.perf_counter()
            rc = run_one(link, plan, exp_dir, prefix, show)
            took = time.perf_counter() - start
            bar.update(1)
            if show:
                tqdm.write(f"{prefix} exit {rc} after {took:.0f}s")
            if rc != 0:
                bar.close()
                raise SystemExit(
                    f"Run {plan.run.name} failed; see {exp_dir / plan.run.name}.log"
                )
    bar.close()


def write_experiment_json(grid: Grid, plans: Sequence[Plan], exp_dir: Path) -> None:
    """Record which grid made the experiment directory (read by ``tracefl report``)."""
    from tracefl.results_io import write_json

    write_json(
        exp_dir / "experiment.json",
        {
            "experiment": grid.experiment,
            "scale": grid.scale,
            "report": grid.report,
            "grid": _repo_relative(grid.grid_path),
            "run_config": _repo_relative(grid.run_config_path),
            "runs": [p.run.name for p in plans],
        },
    )


def _repo_relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------- summary


def summarize(
    results_name: str, exp_dir: Path, copy_static: bool, show: bool = True
) -> pd.DataFrame:
    """Summary table and figures of an experiment; copy figures to ``_static/``."""
    frame, paths = report.build_experiment_report(exp_dir)
    if frame.empty:
        print(f"[{results_name}] no completed run in {exp_dir}")
        return frame
    if copy_static:
        static = REPO / "_static"
        static.mkdir(exist_ok=True)
        for path in paths:
            if path.suffix == ".png":
                shutil.copy2(path, static / f"{results_name}_{path.name}")
    if show:
        shown = [c for c in ("run", *report.ACCURACY_COLUMNS) if frame[c].notna().any()]
        print(markdown_table(frame, shown))
        print(f"[{results_name}] summary: {exp_dir / 'summary.csv'}")
    return frame


# -------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Experiments: " + ", ".join(experiment_names()),
    )
    parser.add_argument("experiment", help="name of a conf/<name>.grid.toml")
    parser.add_argument("--scale", choices=SCALES, default="reduced")
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    parser.add_argument("--rounds", type=int, default=0, help="num-server-rounds")
    parser.add_argument("--datasets", default="", help="comma-separated override")
    parser.add_argument("--models", default="", help="comma-separated override")
    parser.add_argument(
        "--data-dir",
        default="",
        help="local mirror: a folder of Hub-schema files, or a parent folder with "
        "one sub-folder per dataset name (e.g. dbpedia_14/, yahoo_answers_topics/)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of every run")
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config override applied to every run (repeatable)",
    )
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--force", action="store_true", help="re-run every run")
    parser.add_argument(
        "--rerun-changed",
        action="store_true",
        help="re-run completed runs whose config changed (default: refuse)",
    )
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--dry-run", action="store_true", help="list the runs and what would happen"
    )
    parser.add_argument(
        "--no-static", action="store_true", help="do not copy figures to _static/"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars or round lines"
    )
    return parser


def resolve_grid(args: argparse.Namespace) -> tuple[Grid, list[Run]]:
    """The grid of ``args`` with its command-line changes, expanded."""
    grid = load_grid(args.experiment, args.scale, args.conf_dir)
    if args.datasets:
        grid = with_value_list(grid, "dataset", args.datasets.split(","))
    if args.models:
        grid = with_value_list(grid, "model", args.models.split(","))
    extra = parse_assignments(args.run_config)
    if args.rounds:
        extra["num-server-rounds"] = args.rounds
    return grid, expand(grid, extra)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    try:
        grid, runs = resolve_grid(args)
        exp_dir = (args.results / grid.results_name).resolve()
        plans = plan_runs(
            runs,
            exp_dir,
            seed=args.seed,
            data_dir=args.data_dir,
            force=args.force,
            rerun_changed=args.rerun_changed,
        )
    except (GridError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for plan in plans:
            print(f"{plan.action:6s} {plan.run.name}")
            for change in plan.changes:
                print(f"         {change}")
        return 0
    if not args.plot_only:
        if any(p.action == "refuse" for p in plans):
            print(refusal_message(plans, exp_dir), file=sys.stderr)
            return 2
        exp_dir.mkdir(parents=True, exist_ok=True)
        run_grid(grid, plans, exp_dir, show=not args.quiet)
    if not exp_dir.is_dir():
        print(
            f"error: {exp_dir} does not exist; run the experiment first",
            file=sys.stderr,
        )
        return 2
    summarize(
        grid.results_name,
        exp_dir,
        copy_static=not args.no_static and args.scale == "reduced",
        show=not args.quiet,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
