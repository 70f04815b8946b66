"""Compare attribution methods across the runs of an experiment (issue 14).

Reads only run folders (``inputs.csv``, ``scores.csv``, ``clients.csv``,
``rounds.csv``, ``run.json``), so the comparison can be rebuilt at any time.
Runs whose configs differ only in ``seed`` form one *setting*.

Per input, round and method (:func:`input_metrics`) the ground truth is
rebuilt from the label histograms the clients reported (``clients.csv``, the
latest one of each client up to that round), against the clients the method
ranked (the non-pseudo columns of ``scores.csv``: a round's participants for
per-round methods, every client seen so far for cross-round ones), exactly as
the run scored it: the strict correctness rebuilt here must equal the run's
``correct_<method>`` column, else :class:`ComparisonError` names the run, round
and method.

Per setting and method (:func:`compare_methods`) every metric is the mean
over (seed, round, label) cells with a 95% Student-t interval over those cells
(:func:`tracefl.localization.cell_interval`), beside its chance level; strict
accuracy is also split into *converged* rounds (the final stretch of rounds
whose global test accuracy stays within 2 points of the run's best:
:func:`tracefl.localization.converged_rounds`) and the *early* rounds before.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracefl import localization as loc
from tracefl.config import CROSS_ROUND_METHODS
from tracefl.plotting import read_run_config

#: Config keys that do not define a setting (runs differing only here are seeds).
NON_SETTING_KEYS = ("seed", "run-name", "output-dir")
#: Per-input metrics of :func:`input_metrics` summarised by :func:`compare_methods`:
#: (column, bounds of the value).
METRICS: dict[str, tuple[float, float]] = {
    "strict": (0.0, 1.0),
    "strict_chance": (0.0, 1.0),
    "decisive_strict": (0.0, 1.0),
    "decisive_chance": (0.0, 1.0),
    "graded": (0.0, 1.0),
    "graded_chance": (0.0, 1.0),
    "spearman": (-1.0, 1.0),
    "loo_agreement": (0.0, 1.0),
    "faulty": (0.0, 1.0),
    "faulty_chance": (0.0, 1.0),
}
#: Methods that score every client seen so far (whole-training scores).
WHOLE_TRAINING_METHODS = (*CROSS_ROUND_METHODS, "cumulative")
#: Suffix of a whole-training method restricted to the round's participants.
RESTRICTED = " (round's clients)"
#: The reference of the agreement column (exact round leave-one-out).
REFERENCE = "loo"
CLIENT_PREFIX = "client-"


class ComparisonError(ValueError):
    """A run folder that cannot be compared; the message names the file."""


def run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config stored in ``run.json`` (federation size filled in)."""
    config = read_run_config(run_dir)
    if not config:
        raise ComparisonError(f"{run_dir}: no run.json with a config")
    return config


def faulty_ids(config: dict[str, Any]) -> set[int]:
    """Partition ids of the faulty clients (empty: correct mode)."""
    text = str(config.get("faulty-clients", "")).strip()
    return {int(x) for x in text.split(",") if x.strip()}


def latest_label_counts(
    clients: pd.DataFrame, server_round: int
) -> dict[int, np.ndarray]:
    """Each client's latest reported label histogram up to ``server_round``.

    Returns ``{partition id: (C,) int64}`` from the rows of ``clients.csv`` that
    carry a histogram (fused clients).
    """
    label_cols = sorted(
        (c for c in clients.columns if c.startswith("label_")),
        key=lambda c: int(c.removeprefix("label_")),
    )
    rows = clients[(clients["round"] <= server_round)].dropna(subset=label_cols)
    latest = rows.sort_values("round", kind="stable").groupby("client").last()
    hist = latest[label_cols].to_numpy(dtype=np.int64)
    return {int(c): hist[i] for i, c in enumerate(latest.index)}


def input_metrics(run_dir: Path) -> pd.DataFrame:
    """One row per traced round, method and input, with per-input metrics.

    With partial participation, each whole-training method (cross-round,
    cumulative: they rank every client seen so far) also appears restricted to
    the round's participants, as ``<method> (round's clients)``: its scores of
    those clients, traced by their argmax - the per-round methods' question
    ("which of this round's clients?") answered with whole-training scores.

    Columns: ``round``, ``converged`` (bool), ``method``, ``input_index``,
    ``label``, ``num_ranked`` and the columns of :data:`METRICS` (``strict*``,
    ``decisive*``, ``graded*``, ``spearman`` in correct mode; ``faulty*`` in
    faulty mode; ``loo_agreement`` in both, where the run has ``loo``). A
    metric that does not apply is NaN (``decisive_strict`` on an input that is
    not decisive, Spearman's rho where it is undefined).

    Raises
    ------
    ComparisonError
        A file is missing, or the rebuilt strict/faulty correctness of an
        input differs from the run's ``correct_<method>``.
    """
    run_dir = Path(run_dir)
    try:
        inputs = pd.read_csv(run_dir / "inputs.csv")
        scores = pd.read_csv(run_dir / "scores.csv")
        clients = pd.read_csv(run_dir / "clients.csv")
        rounds = pd.read_csv(run_dir / "rounds.csv")
    except FileNotFoundError as err:
        raise ComparisonError(f"{run_dir}: {err.filename} missing") from err
    config = run_config(run_dir)
    faulty = faulty_ids(config)
    accuracy = rounds.dropna(subset=["test_accuracy"])
    converged = set(
        accuracy["round"][
            loc.converged_rounds(accuracy["round"], accuracy["test_accuracy"])
        ].astype(int)
    )
    scores = scores[scores["client"].str.startswith(CLIENT_PREFIX)]
    fused_rows = clients[clients["status"] == "fused"]
    participants = {
        int(r): sorted(int(c) for c in rows["client"])
        for r, rows in fused_rows.groupby("round")
    }
    frames = []
    counts: dict[int, dict[int, np.ndarray]] = {}
    for (server_round, method), block in scores.groupby(["round", "method"], sort=True):
        if server_round not in counts:
            counts[server_round] = latest_label_counts(clients, int(server_round))
        metrics = functools.partial(
            _round_method_metrics,
            run_dir,
            int(server_round),
            str(method),
            block,
            inputs[inputs["round"] == server_round],
            counts[server_round],
            faulty,
            int(server_round) in converged,
        )
        frames.append(metrics())
        fused = participants.get(int(server_round), [])
        if (
            method in WHOLE_TRAINING_METHODS
            and 0 < len(fused) < frames[-1]["num_ranked"].iloc[0]
        ):
            frames.append(metrics(restrict_to=fused))
    if not frames:
        return pd.DataFrame(columns=["round", "converged", "method", "input_index"])
    return pd.concat(frames, ignore_index=True)


def _round_method_metrics(
    run_dir: Path,
    server_round: int,
    method: str,
    block: pd.DataFrame,
    inputs: pd.DataFrame,
    counts_by_client: dict[int, np.ndarray],
    faulty: set[int],
    converged: bool,
    restrict_to: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Per-input metrics of one method on one round (see :func:`input_metrics`).

    With ``restrict_to`` (partition ids), the method's scores of those clients
    only, traced by their argmax and named ``<method>`` + :data:`RESTRICTED`.
    """
    where = f"{run_dir.name}, round {server_round}, method {method}"
    columns = list(dict.fromkeys(block["client"]))
    if restrict_to is not None:
        keep = {f"{CLIENT_PREFIX}{i}" for i in restrict_to}
        columns = [c for c in columns if c in keep]
    table = block.pivot(index="input_index", columns="client", values="score")
    order = inputs["input_index"].to_numpy()
    try:
        score_matrix = table.loc[order, columns].to_numpy(dtype=np.float64)  # (B, K)
    except KeyError as err:
        raise ComparisonError(
            f"{where}: inputs.csv and scores.csv trace different inputs"
        ) from err
    ids = [int(c.removeprefix(CLIENT_PREFIX)) for c in columns]
    missing = [i for i in ids if i not in counts_by_client]
    if missing:
        raise ComparisonError(
            f"{where}: clients.csv has no label histogram of client(s) {missing}"
        )
    counts = np.stack([counts_by_client[i] for i in ids])  # (K, C)
    if restrict_to is None:
        traced_col = f"traced_{method}"
        if traced_col not in inputs:
            raise ComparisonError(f"{where}: inputs.csv has no column {traced_col}")
        position = {cid: k for k, cid in enumerate(ids)}
        try:
            traced = np.array([position[int(t)] for t in inputs[traced_col]])
        except KeyError as err:
            raise ComparisonError(
                f"{where}: traced client {err.args[0]} is not among its ranked clients"
            ) from err
    else:
        traced = score_matrix.argmax(axis=1)
    labels = inputs["true_label"].to_numpy(dtype=np.int64)
    out: dict[str, Any] = {
        "round": server_round,
        "converged": converged,
        "method": method if restrict_to is None else method + RESTRICTED,
        "input_index": order,
        "label": labels,
        "num_ranked": len(ids),
    }
    if faulty:
        is_faulty = np.array([cid in faulty for cid in ids])
        correct = is_faulty[traced]
        out["faulty"] = correct.astype(float)
        out["faulty_chance"] = float(is_faulty.mean())
    else:
        correct = loc.strict_correct(traced, labels, counts)
        decisive = loc.decisive_inputs(labels, counts)
        out["strict"] = correct.astype(float)
        out["strict_chance"] = loc.strict_random_baseline(labels, counts)
        out["decisive"] = decisive.astype(float)
        out["decisive_strict"] = np.where(decisive, correct, np.nan)
        out["decisive_chance"] = np.where(
            decisive, loc.strict_random_baseline(labels, counts), np.nan
        )
        out["graded"] = loc.graded_score(traced, labels, counts)
        out["graded_chance"] = loc.graded_random_baseline(labels, counts)
        out["spearman"] = loc.spearman_with_counts(score_matrix, labels, counts)
    if restrict_to is None:
        recorded = inputs[f"correct_{method}"].astype(bool).to_numpy()
        if not np.array_equal(correct, recorded):
            bad = order[correct != recorded].tolist()
            raise ComparisonError(
                f"{where}: the rebuilt ground truth disagrees with inputs.csv "
                f"correct_{method} on test inputs {bad}"
            )
    reference = f"traced_{REFERENCE}"
    if reference in inputs:
        traced_ids = np.array(ids)[traced]
        out["loo_agreement"] = (traced_ids == inputs[reference].to_numpy()).astype(
            float
        )
    return pd.DataFrame(out)


def seconds_per_round(methods: pd.DataFrame) -> pd.Series:
    """Mean attribution seconds per round of each method in ``methods.csv``.

    Per-round methods record one round's cost; the cross-round methods record
    the cost of their accumulator so far (every round adds one attribution
    over all query inputs), so theirs is the last value over its round.
    """
    out = {}
    for method, rows in methods.groupby("method", sort=False):
        if method in CROSS_ROUND_METHODS:
            last = rows.loc[rows["round"].idxmax()]
            out[method] = float(last["seconds"]) / int(last["round"])
        else:
            out[method] = float(rows["seconds"].mean())
    return pd.Series(out, dtype=float)


def setting_of(config: dict[str, Any]) -> str:
    """A setting's identity: the run's config without its seed and location."""
    kept = {k: v for k, v in config.items() if k not in NON_SETTING_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def setting_label(config: dict[str, Any], clients_per_round: int) -> str:
    """``cnn, α=0.3, 4/10 clients`` (plus ``, faulty`` in faulty mode)."""
    alpha = float(config["dirichlet-alpha"])
    label = (
        f"{config['model']}, α={alpha:g}, "
        f"{clients_per_round}/{config['num-clients']} clients"
    )
    return label + (", faulty" if faulty_ids(config) else "")


def compare_methods(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """One row per setting and method, metrics over the seeds' (round, label) cells.

    Columns: ``setting`` (label), ``model``, ``alpha``, ``clients_per_round``,
    ``num_clients``, ``faulty_mode``, ``seeds``, ``rounds``, ``max_test_accuracy``
    (mean over seeds), ``method``, ``traced_rounds``, ``converged_rounds``
    (their share among the traced rounds), ``inputs``, ``cells``; per metric of
    :data:`METRICS` ``<metric>`` (mean over cells), ``<metric>_low`` and
    ``<metric>_high`` (95% interval); ``decisive_share`` (share of the traced
    inputs that are decisive); ``strict_early*`` / ``strict_converged*``
    (and ``faulty_…`` in faulty mode) split by round; ``seconds_per_round``.
    Settings are sorted by mode (correct first), model, alpha and decreasing
    clients per round; methods follow the ``methods`` order of the run config.
    """
    groups: dict[str, list[tuple[int, Path, dict[str, Any]]]] = {}
    for run_dir in run_dirs:
        config = run_config(run_dir)
        groups.setdefault(setting_of(config), []).append(
            (int(config["seed"]), Path(run_dir), config)
        )
    rows = []
    for members in groups.values():
        rows += _setting_rows(members)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_order"] = np.arange(len(frame))
    frame["_clients"] = -frame["clients_per_round"]
    keys = ["faulty_mode", "model", "alpha", "_clients", "num_clients", "_order"]
    frame = frame.sort_values(keys, kind="stable")
    return frame.drop(columns=["_order", "_clients"]).reset_index(drop=True)


def _setting_rows(members: list[tuple[int, Path, dict[str, Any]]]) -> list[dict]:
    config = members[0][2]
    per_input, test_acc, participants, seconds = [], [], [], []
    num_rounds = []
    for seed, run_dir, _ in members:
        frame = input_metrics(run_dir)
        frame.insert(0, "seed", seed)
        per_input.append(frame)
        rounds = pd.read_csv(run_dir / "rounds.csv")
        num_rounds.append(len(rounds))
        test_acc.append(float(pd.to_numeric(rounds["test_accuracy"]).max()))
        participants += rounds["num_participants"].dropna().tolist()
        seconds.append(seconds_per_round(pd.read_csv(run_dir / "methods.csv")))
    data = pd.concat(per_input, ignore_index=True)
    clients_per_round = int(np.median(participants)) if participants else 0
    base = {
        "setting": setting_label(config, clients_per_round),
        "model": config["model"],
        "alpha": float(config["dirichlet-alpha"]),
        "clients_per_round": clients_per_round,
        "num_clients": int(config["num-clients"]),
        "faulty_mode": bool(faulty_ids(config)),
        "seeds": len(members),
        "rounds": int(np.median(num_rounds)),
        "max_test_accuracy": float(np.mean(test_acc)),
    }
    mean_seconds = pd.concat(seconds, axis=1).mean(axis=1)
    main = "faulty" if base["faulty_mode"] else "strict"
    rows = []
    listed = [m.strip() for m in str(config.get("methods", "")).split(",")]
    present = set(data["method"])
    order = [m for m in listed if m in present]
    order += sorted(present - set(order))
    for method in order:
        sub = data[data["method"] == method]
        traced = sub[["seed", "round"]].drop_duplicates()
        converged = sub[sub["converged"]][["seed", "round"]].drop_duplicates()
        row: dict[str, Any] = {
            **base,
            "method": method,
            "traced_rounds": len(traced),
            "converged_rounds": len(converged) / len(traced) if len(traced) else 0.0,
            "inputs": len(sub),
            "cells": len(sub[["seed", "round", "label"]].drop_duplicates()),
        }
        for metric, bounds in METRICS.items():
            row.update(_estimate(sub, metric, bounds, metric))
        row["decisive_share"] = (
            float(sub["decisive"].mean()) if "decisive" in sub else np.nan
        )
        for part, keep in (("early", False), ("converged", True)):
            row.update(
                _estimate(
                    sub[sub["converged"] == keep], main, (0.0, 1.0), f"{main}_{part}"
                )
            )
        row["seconds_per_round"] = float(
            mean_seconds.get(method.removesuffix(RESTRICTED), np.nan)
        )
        rows.append(row)
    return rows


def _estimate(
    frame: pd.DataFrame, metric: str, bounds: tuple[float, float], name: str
) -> dict[str, float]:
    """``{name, name_low, name_high}`` of ``metric`` over (seed, round, label) cells."""
    if metric not in frame or frame[metric].isna().all():
        return {name: np.nan, f"{name}_low": np.nan, f"{name}_high": np.nan}
    est = loc.cell_interval(
        frame[metric].to_numpy(dtype=np.float64),
        frame["seed"].to_numpy(),
        frame["round"].to_numpy(),
        frame["label"].to_numpy(),
        bounds=bounds,
    )
    return {name: est.mean, f"{name}_low": est.low, f"{name}_high": est.high}


def _pct(mean: float, low: float | None = None, high: float | None = None) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    text = f"{100 * mean:.0f}"
    if low is not None and high is not None and np.isfinite(low):
        text += f" [{100 * low:.0f}, {100 * high:.0f}]"
    return text


def _num(mean: float, low: float, high: float) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(low):
        return f"{mean:.2f}"
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def markdown_table(summary: pd.DataFrame) -> str:
    """The comparison as a Markdown table (percent; 95% intervals in brackets).

    Correct mode: strict (all, early, converged rounds) with chance, strict on
    decisive inputs with chance and their share, graded score with chance,
    Spearman's rho, agreement with ``loo``. Faulty mode: faulty client found
    with chance and agreement with ``loo``.
    """
    lines = [
        "| setting | method | strict % [95% CI] | chance | early rounds | "
        "converged rounds | decisive strict (share) | decisive chance | "
        "graded (chance) | Spearman ρ | = LOO % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    faulty_lines = [
        "| setting | method | faulty client found % [95% CI] | chance | "
        "early rounds | converged rounds | = LOO % |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in summary.iterrows():
        if r["faulty_mode"]:
            faulty_lines.append(
                f"| {r['setting']} | {r['method']} | "
                f"{_pct(r['faulty'], r['faulty_low'], r['faulty_high'])} | "
                f"{_pct(r['faulty_chance'])} | {_pct(r['faulty_early'])} | "
                f"{_pct(r['faulty_converged'])} | {_pct(r['loo_agreement'])} |"
            )
            continue
        lines.append(
            f"| {r['setting']} | {r['method']} | "
            f"{_pct(r['strict'], r['strict_low'], r['strict_high'])} | "
            f"{_pct(r['strict_chance'])} | {_pct(r['strict_early'])} | "
            f"{_pct(r['strict_converged'])} | "
            f"{_pct(r['decisive_strict'])} ({_pct(r['decisive_share'])}) | "
            f"{_pct(r['decisive_chance'])} | "
            f"{r['graded']:.2f} ({r['graded_chance']:.2f}) | "
            f"{_num(r['spearman'], r['spearman_low'], r['spearman_high'])} | "
            f"{_pct(r['loo_agreement'])} |"
        )
    parts = []
    if len(lines) > 2:
        parts.append("\n".join(lines))
    if len(faulty_lines) > 2:
        parts.append("\n".join(faulty_lines))
    return "\n\n".join(parts) + "\n"


def markdown_pivot(summary: pd.DataFrame, metric: str) -> str:
    """``metric`` (percent, ``[95% interval]``) as a method x setting table.

    The last row gives each setting's chance levels: one value where every
    method ranks the same clients, else per-round / cross-round (the methods
    scored against every client seen so far have a lower one).
    """
    chance = f"{metric.split('_')[0]}_chance"
    if metric == "decisive_strict":
        chance = "decisive_chance"
    settings = list(dict.fromkeys(summary["setting"]))
    lines = [
        "| method | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for method in dict.fromkeys(summary["method"]):
        cells = []
        for setting in settings:
            row = summary[
                (summary["setting"] == setting) & (summary["method"] == method)
            ]
            cells.append(
                "n/a"
                if row.empty
                else _pct(
                    row[metric].iloc[0],
                    row[f"{metric}_low"].iloc[0],
                    row[f"{metric}_high"].iloc[0],
                )
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if chance in summary:
        cells = []
        for setting in settings:
            rows = summary[summary["setting"] == setting]
            levels = list(dict.fromkeys(f"{100 * v:.0f}" for v in rows[chance]))
            cells.append(" / ".join(levels))
        lines.append("| chance (random client) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
