"""Adversarial experiments from their result files: backdoor and gaming tables.

Reads a run directory's ``run.json``, ``rounds.csv``, ``methods.csv``,
``inputs.csv``, ``scores.csv`` and ``clients.csv`` only (no re-training).

* :func:`backdoor_table`: per method (every TraceFL method, round leave-one-out
  ``loo`` among them, FedDebug and a label-count heuristic), the share of traced
  rounds' answers that name a backdoor client, with its chance level; plus the
  attack's success and the clean accuracy per round (:func:`attack_curve`).
* :func:`gaming_table`: per method, the gaming clients' share of the traced
  inputs and their best rank among the clients a method ranks (1 = top), with
  the chance share; :func:`gaming_shift` puts a gamed run beside the honest run
  of the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracefl.config import parse_run_config

#: The heuristic a model-free defender could use: blame the client that reports
#: the most samples of the target class (poisoned samples are relabelled to it).
LABEL_COUNT_HEURISTIC = "label-count"
FEDDEBUG = "feddebug"


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run config stored in ``run.json``."""
    return json.loads((Path(run_dir) / "run.json").read_text())["config"]


def _ids(text: str) -> set[int]:
    return {int(t) for t in str(text).split(",") if t.strip()}


def attack_curve(run_dir: Path) -> pd.DataFrame:
    """Per round: clean accuracy, attack success rate and its clean baseline."""
    rounds = pd.read_csv(Path(run_dir) / "rounds.csv")
    return rounds[
        ["round", "test_accuracy", "attack_success_rate", "attack_success_baseline"]
    ].rename(columns={"test_accuracy": "clean_accuracy"})


def backdoor_table(run_dir: Path) -> pd.DataFrame:
    """Localization of the backdoor clients per method, with chance levels.

    Columns: ``method``, ``rounds`` (traced rounds), ``localization`` (mean over
    traced rounds of the share of traced inputs whose traced client is a
    backdoor client; FedDebug: share of backdoor clients among its suspects;
    label-count: whether the top reporter of the target class is one),
    ``chance`` (the same for a uniformly random client), and the same two over
    the ``attack_rounds`` only: traced rounds where the trigger sends more
    inputs to the target than clean inputs go there (``attack_success_rate >
    attack_success_baseline``), i.e. where there is a backdoor to find rather
    than a model that outputs the target anyway.
    """
    run_dir = Path(run_dir)
    cfg = parse_run_config(run_config(run_dir))
    if not cfg.backdoor_mode:
        raise ValueError(f"{run_dir} is not a backdoor run (backdoor-clients empty)")
    planted = cfg.backdoor_client_ids
    rounds = pd.read_csv(run_dir / "rounds.csv")
    traced = rounds[rounds["status"] == "traced"]
    attack = set(
        traced.loc[
            traced["attack_success_rate"] > traced["attack_success_baseline"], "round"
        ]
    )
    long: list[dict[str, Any]] = []
    methods = pd.read_csv(run_dir / "methods.csv")
    for row in methods.itertuples():
        long.append(
            {
                "method": row.method,
                "round": row.round,
                "found": row.faulty_accuracy,
                "chance": row.faulty_random_baseline,
            }
        )
    for row in traced.itertuples():
        found = pd.to_numeric(pd.Series([row.feddebug_accuracy]), errors="coerce")[0]
        if not pd.isna(found):
            members = [int(p) for p in str(row.participants).split(";")]
            long.append(
                {
                    "method": FEDDEBUG,
                    "round": row.round,
                    "found": float(found),
                    "chance": sum(p in planted for p in members) / len(members),
                }
            )
    clients = pd.read_csv(run_dir / "clients.csv")
    fused = clients[clients["status"] == "fused"]
    column = f"label_{cfg.backdoor_target}"
    for rnd in traced["round"]:
        part = fused[fused["round"] == rnd]
        top = part.loc[part[column] == part[column].max(), "client"].astype(int)
        long.append(
            {
                "method": LABEL_COUNT_HEURISTIC,
                "round": rnd,
                "found": float(np.mean([c in planted for c in top])),
                "chance": float(np.mean([int(c) in planted for c in part["client"]])),
            }
        )
    frame = pd.DataFrame(long)
    out = []
    for method, part in frame.groupby("method", sort=False):
        hit = part[part["round"].isin(attack)]
        out.append(
            {
                "method": method,
                "rounds": len(part),
                "localization": float(part["found"].mean()),
                "chance": float(part["chance"].mean()),
                "attack_rounds": len(hit),
                "localization_attack_rounds": (
                    float(hit["found"].mean()) if len(hit) else float("nan")
                ),
                "chance_attack_rounds": (
                    float(hit["chance"].mean()) if len(hit) else float("nan")
                ),
            }
        )
    return pd.DataFrame(out)


def gaming_table(run_dir: Path, gamers: Sequence[int] | None = None) -> pd.DataFrame:
    """How much each method credits the gaming clients.

    Parameters
    ----------
    run_dir
        A run directory.
    gamers
        Partition ids of the gaming clients (default: the run's
        ``gaming-clients``, also set in the honest run it is compared with).

    Returns
    -------
    pandas.DataFrame
        Per method: ``inputs`` traced, ``share`` (traced to a gaming client),
        ``chance_share`` (gaming clients' share of the clients ranked),
        ``rank`` (mean best rank of a gaming client, 1 = top), ``clients``
        (mean number of clients ranked) and ``implausible`` (share of the
        inputs traced to a gaming client whose attributed class, the prediction,
        it reported no sample of: credit a defender can see is unearned).
    """
    run_dir = Path(run_dir)
    ids = (
        set(gamers)
        if gamers is not None
        else _ids(run_config(run_dir)["gaming-clients"])
    )
    if not ids:
        raise ValueError(f"{run_dir}: name the gaming clients (gaming-clients)")
    names = {f"client-{i}" for i in ids}
    inputs = pd.read_csv(run_dir / "inputs.csv")
    scores = pd.read_csv(run_dir / "scores.csv")
    scores = scores[scores["client"].str.startswith("client-")]
    clients = pd.read_csv(run_dir / "clients.csv")
    fused = clients[clients["status"] == "fused"].set_index(["round", "client"])
    rows = []
    methods = [c.removeprefix("correct_") for c in inputs if c.startswith("correct_")]
    for method in methods:
        traced = inputs[f"traced_{method}"]
        to_gamer = inputs[traced.isin(ids)]
        held = [
            _holds(fused, int(r), int(c), int(y))
            for r, c, y in zip(
                to_gamer["round"],
                to_gamer[f"traced_{method}"],
                to_gamer["predicted_label"],
                strict=True,
            )
        ]
        part = scores[scores["method"] == method].copy()
        part["rank"] = part.groupby(["round", "input_index"])["score"].rank(
            ascending=False, method="min"
        )
        part["gamer"] = part["client"].isin(names).astype(float)
        per_input = part.groupby(["round", "input_index"])
        chance = per_input["gamer"].mean()
        best = part[part["gamer"] > 0].groupby(["round", "input_index"])["rank"].min()
        ranked = per_input["gamer"].count()
        rows.append(
            {
                "method": method,
                "inputs": len(traced),
                "share": float(traced.isin(ids).mean()),
                "chance_share": float(chance.mean()),
                "rank": float(best.mean()) if len(best) else float("nan"),
                "clients": float(ranked.mean()),
                "implausible": float(1 - np.mean(held)) if held else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _holds(fused: pd.DataFrame, rnd: int, client: int, label: int) -> bool:
    """Whether ``client`` reported any sample of ``label`` up to round ``rnd``."""
    rows = fused.xs(client, level="client")
    rows = rows[rows.index <= rnd]
    return bool(len(rows)) and int(rows[f"label_{label}"].iloc[-1]) > 0


def gaming_shift(honest_dir: Path, gamed_dir: Path) -> pd.DataFrame:
    """A gamed run beside the honest run with the same seed, per method.

    ``share``/``rank`` of the gaming clients in each, and ``share_change`` =
    gamed minus honest (how far the method's answer moved).
    """
    gamers = sorted(_ids(run_config(gamed_dir)["gaming-clients"]))
    honest = gaming_table(honest_dir, gamers).set_index("method")
    gamed = gaming_table(gamed_dir, gamers).set_index("method")
    out = pd.DataFrame(
        {
            "honest_share": honest["share"],
            "gamed_share": gamed["share"],
            "share_change": gamed["share"] - honest["share"],
            "honest_rank": honest["rank"],
            "gamed_rank": gamed["rank"],
            "chance_share": gamed["chance_share"],
            "honest_implausible": honest["implausible"],
            "gamed_implausible": gamed["implausible"],
        }
    )
    return out.reset_index()


# ------------------------------------------------------------------- figures


def _completed(exp_dir: Path) -> list[Path]:
    """Run sub-directories whose ``run.json`` says the run completed, by name."""
    from tracefl.results_io import read_json

    return [
        d
        for d in sorted(Path(exp_dir).iterdir())
        if d.is_dir() and (read_json(d / "run.json") or {}).get("status") == "completed"
    ]


def _bars(
    ax: Any,
    table: pd.DataFrame,
    columns: Sequence[tuple[str, str, str]],
    chance: str,
) -> None:
    """Grouped bars per method, chance level as a black tick on each group."""
    x = np.arange(len(table))
    width = 0.8 / len(columns)
    for j, (column, label, color) in enumerate(columns):
        ax.bar(
            x + (j - (len(columns) - 1) / 2) * width,
            100 * table[column].astype(float),
            width,
            label=label,
            color=color,
        )
    ax.scatter(
        x,
        100 * table[chance].astype(float),
        marker="_",
        s=200,
        color="black",
        label="chance",
        zorder=3,
    )
    ax.set_xticks(x, table["method"], rotation=30, ha="right")
    ax.set_ylim(0, 105)


def _legend_under_labels(ax: Any, ncol: int) -> None:
    """A legend below rotated tick labels (outside the data)."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=ncol)


def backdoor_summary(exp_dir: Path) -> pd.DataFrame:
    """:func:`backdoor_table` of every completed run, with the run's attack."""
    rows = []
    for run_dir in _completed(exp_dir):
        cfg = run_config(run_dir)
        curve = attack_curve(run_dir)
        table = backdoor_table(run_dir)
        table.insert(0, "run", run_dir.name)
        table["final_attack_success"] = float(curve["attack_success_rate"].iloc[-1])
        table["final_attack_baseline"] = float(
            curve["attack_success_baseline"].iloc[-1]
        )
        table["final_clean_accuracy"] = float(curve["clean_accuracy"].iloc[-1])
        table["backdoor_fraction"] = cfg["backdoor-fraction"]
        rows.append(table)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def backdoor_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Backdoor experiment: localization per method and run; attack per round."""
    from tracefl.plotting import TEXT_WIDTH, figure_style, legend_below, save_figure
    from tracefl.results_io import write_csv

    exp_dir = Path(exp_dir)
    summary = backdoor_summary(exp_dir)
    if summary.empty:
        return []
    write_csv(
        exp_dir / "backdoor_summary.csv", summary.to_dict("records"), summary.columns
    )
    runs = list(dict.fromkeys(summary["run"]))
    colors = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd")
    import matplotlib.pyplot as plt

    with figure_style():
        fig, (left, right) = plt.subplots(
            1, 2, figsize=(TEXT_WIDTH, 2.8), width_ratios=(2, 1)
        )
        wide = summary.pivot_table(
            index="method", columns="run", values="localization", sort=False
        ).reset_index()
        wide["chance"] = summary.groupby("method", sort=False)["chance"].mean().values
        _bars(
            left,
            wide,
            [(run, run, colors[i % len(colors)]) for i, run in enumerate(runs)],
            "chance",
        )
        left.set_ylabel("Backdoor client found (%)")
        left.set_title("Who taught the backdoor? (triggered inputs)")
        _legend_under_labels(left, ncol=len(runs) + 1)
        for i, run_dir in enumerate(_completed(exp_dir)):
            curve = attack_curve(run_dir)
            color = colors[i % len(colors)]
            right.plot(
                curve["round"],
                100 * curve["attack_success_rate"],
                color=color,
                marker="o",
                label=f"{run_dir.name}: attack success",
            )
            right.plot(
                curve["round"],
                100 * curve["clean_accuracy"],
                color=color,
                linestyle="--",
                label=f"{run_dir.name}: clean accuracy",
            )
            right.plot(
                curve["round"],
                100 * curve["attack_success_baseline"],
                color=color,
                linestyle=":",
                label=f"{run_dir.name}: target on clean inputs",
            )
        right.set_xlabel("Round")
        right.set_ylabel("%")
        right.set_ylim(0, 105)
        right.set_title("Attack and clean accuracy")
        legend_below(right, ncol=1)
        return save_figure(fig, exp_dir / "backdoor")


def gaming_summary(exp_dir: Path) -> pd.DataFrame:
    """Every gamed run beside the honest run of its setting (:func:`gaming_shift`).

    Runs are grouped by ``backdoor-clients`` (the setting); the run with
    ``gaming-strategy = none`` is the honest one. Both runs' final clean accuracy
    and attack success (backdoor setting) show whether the gamer kept its effect.
    """
    runs = _completed(exp_dir)
    by_setting: dict[str, list[Path]] = {}
    for run_dir in runs:
        by_setting.setdefault(str(run_config(run_dir)["backdoor-clients"]), []).append(
            run_dir
        )
    rows = []
    for setting, group in by_setting.items():
        honest = [r for r in group if run_config(r)["gaming-strategy"] == "none"]
        if len(honest) != 1:
            raise ValueError(
                f"{exp_dir}: setting backdoor-clients={setting!r} needs exactly one "
                f"honest run (gaming-strategy = none), found {len(honest)}"
            )
        for gamed in group:
            cfg = run_config(gamed)
            if gamed == honest[0]:
                continue
            table = gaming_shift(honest[0], gamed)
            table.insert(0, "run", gamed.name)
            table.insert(1, "honest_run", honest[0].name)
            table.insert(2, "strategy", cfg["gaming-strategy"])
            table.insert(3, "strength", cfg["gaming-strength"])
            table.insert(4, "mode", "backdoor" if setting else "benign")
            for who, run_dir in (("honest", honest[0]), ("gamed", gamed)):
                last = pd.read_csv(run_dir / "rounds.csv").iloc[-1]
                table[f"{who}_final_accuracy"] = float(last["test_accuracy"])
                table[f"{who}_final_attack_success"] = float(
                    pd.to_numeric(last.get("attack_success_rate"), errors="coerce")
                )
            rows.append(table)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def gaming_figures(exp_dir: Path, frame: pd.DataFrame) -> list[Path]:
    """Gaming experiment: the gaming client's share of traces, honest vs gamed."""
    from tracefl.plotting import COLUMN_WIDTH, figure_style, save_figure
    from tracefl.results_io import write_csv

    exp_dir = Path(exp_dir)
    summary = gaming_summary(exp_dir)
    if summary.empty:
        return []
    write_csv(
        exp_dir / "gaming_summary.csv", summary.to_dict("records"), summary.columns
    )
    runs = list(dict.fromkeys(summary["run"]))
    import matplotlib.pyplot as plt

    with figure_style():
        fig, axes = plt.subplots(
            1, len(runs), figsize=(COLUMN_WIDTH * len(runs), 2.8), squeeze=False
        )
        for ax, run in zip(axes[0], runs, strict=True):
            part = summary[summary["run"] == run].reset_index(drop=True)
            _bars(
                ax,
                part,
                [
                    ("honest_share", "honest run", "#1f77b4"),
                    ("gamed_share", "gaming run", "#d62728"),
                ],
                "chance_share",
            )
            first = part.iloc[0]
            what = (
                "triggered inputs traced to it"
                if first["mode"] == "backdoor"
                else "benign inputs traced to it"
            )
            ax.set_title(f"{first['strategy']} (s = {first['strength']:g}): {what}")
            ax.set_ylabel("Gaming client's share (%)")
        _legend_under_labels(axes[0][len(runs) // 2], ncol=3)  # one, shared
        return save_figure(fig, exp_dir / "gaming")
