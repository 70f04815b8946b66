"""Every attribution method against the retraining ground truth, and its cost.

Reads what :mod:`tooling.retraining` left in ``results/<study>/`` (the
reference runs' ``scores.csv``/``methods.csv``/``rounds.csv``/``clients.csv``,
the ground-truth and estimate tables) and writes ``results/<study>/comparison/``:

``per_input.csv``
    per scenario, method, round and traced input: Spearman's rho between the
    method's client scores and the true responsibility (``d_logprob``: the
    drop of ``log p_pred`` when the client is removed and the federation
    retrained; ``d_logit``: the drop of the predicted logit), tie-aware top-1
    agreement with each, and the label-count verdicts (strict; faulty);
``summary.csv``
    the per-input columns averaged per scenario and method (with the number of
    inputs, a 95% normal-approximation interval for the mean rho and the
    chance levels: rho 0, top-1 ``1/K``, the label-count baselines);
``by_round.csv``
    the same per round;
``fedinfluence_check.csv``
    the Fed-Influence paper's own check per estimator and round: relative
    error and cosine of the estimated vs the true FIP (all entries, tracked,
    untracked; for ``round-loo`` the blocks the reference run's Fed-Influence
    tracks), Pearson's r over clients of the estimated vs the true change
    of the test loss (FIL), and over inputs x clients of the per-input FIL;
``costs.csv``
    per run: wall time; per method: attribution seconds per round; per
    Fed-Influence run: client seconds, payload bytes, server seconds and
    memory per round;
``summary.md``
    the tables in Markdown, and the figure ``fedinfluence_truth.png`` (copied
    to ``_static/``).

Methods: the app's (``paper``, ``update``, ``loo``, ``cross-round``,
``cross-round-unweighted``, ``cumulative``, ``fedinfluence``), the other
Fed-Influence runs (``fedinfluence-<variant>``), ``label-counts`` (the count
of the predicted label each client reported: the proxy the label-count
metrics use, as a method) and ``retraining`` (the truth itself, scored by the
label-count metrics). FedDebug localizes faulty clients only and has no
per-input scores: it appears in the faulty scenario's localization column.

    python -m tooling.truth_comparison fedinfluence
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from tooling.flower_local import REPO_ROOT
from tooling.retraining import REFERENCE
from tracefl import localization as loc
from tracefl.config import CROSS_ROUND_METHODS, METHOD_NAMES
from tracefl.results_io import write_csv, write_text

APP_METHODS = (*METHOD_NAMES, "fedinfluence")
LABEL_COUNTS = "label-counts"
TRUTH = "retraining"
TRUTHS = ("logprob", "logit")
FIGURE = "fedinfluence_truth.png"
#: Legend placement under an axis (keeps bars and lines readable).
BELOW = {
    "fontsize": 8,
    "loc": "upper center",
    "bbox_to_anchor": (0.5, -0.14),
    "ncol": 2,
    "frameon": False,
}


# ----------------------------------------------------------------- metrics


def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, Spearman's rho of ``a`` and ``b`` (``(B, K)`` each; ties averaged).

    NaN where a row of either is constant (rho undefined).
    """
    ra = rankdata(np.asarray(a, dtype=np.float64), axis=1)
    rb = rankdata(np.asarray(b, dtype=np.float64), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    cov = (ra * rb).sum(axis=1)
    return np.divide(cov, denom, out=np.full(len(cov), np.nan), where=denom > 0)


def tie_aware_top1(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row, ``1/|ties|`` if the truth's top client is among the top scorers.

    A method that gives several clients the same best score is credited with
    the chance of a uniformly random choice among them (``label-counts`` ties
    often); the truth's top client is its argmax (real-valued, no ties here).
    """
    scores = np.asarray(scores, dtype=np.float64)
    best = scores >= scores.max(axis=1, keepdims=True)
    target = np.asarray(truth).argmax(axis=1)
    hit = best[np.arange(len(best)), target]
    return hit / best.sum(axis=1)


def mean_interval(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, 95% normal-approximation half-width, count (NaN ignored)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    half = 1.96 * values.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return float(values.mean()), float(half), n


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r (NaN when either side is constant or has < 3 points)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# ------------------------------------------------------------------ inputs


class Scenario:
    """One scenario's reference results and ground-truth tables, aligned.

    Every per-input matrix is ``(B, K)``: rows are the traced inputs of all
    rounds (``self.keys``: ``round``, ``input_index``, ...), columns the
    clients ``client-0 .. client-{K-1}``.
    """

    def __init__(self, name: str, runs_dir: Path, truth_dir: Path) -> None:
        self.name = name
        self.runs_dir = runs_dir
        self.reference = runs_dir / REFERENCE
        self.run = json.loads((self.reference / "run.json").read_text())
        self.num_clients = int(self.run["config"]["num-clients"])
        self.clients = [f"client-{k}" for k in range(self.num_clients)]
        faulty = str(self.run["config"].get("faulty-clients", "")).strip()
        self.faulty = {f"client-{int(t)}" for t in faulty.split(",") if t.strip()}
        effects = pd.read_csv(truth_dir / "effects.csv")
        self.keys = (
            effects[["round", "input_index", "mode", "true_label", "predicted_label"]]
            .drop_duplicates(["round", "input_index"])
            .sort_values(["round", "input_index"])
            .reset_index(drop=True)
        )
        self.truth = {
            "logprob": self._matrix(effects, "d_logprob"),
            "logit": -self._matrix(effects, "d_logit"),
        }
        self.effects = effects
        self.counterfactual_labels = self._matrix(effects, "cf_label")
        self.estimates = pd.read_csv(truth_dir / "estimates_effects.csv")
        self.estimates_test = pd.read_csv(truth_dir / "estimates_test.csv")
        self.estimates_fip = pd.read_csv(truth_dir / "estimates_fip.csv")
        self.test_effects = pd.read_csv(truth_dir / "test_effects.csv")
        self.manifest = json.loads((truth_dir / "manifest.json").read_text())
        self.label_counts = self._label_counts()

    def _matrix(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        table = frame.pivot_table(
            index=["round", "input_index"], columns="client", values=column
        )
        index = pd.MultiIndex.from_frame(self.keys[["round", "input_index"]])
        table = table.reindex(index=index, columns=self.clients)
        if table.isna().any().any():
            raise ValueError(
                f"{self.name}: {column} misses clients or inputs of the reference"
            )
        return table.to_numpy(dtype=np.float64)

    def _label_counts(self) -> np.ndarray:
        """``(K, C)`` label histograms the clients reported (their last)."""
        clients = pd.read_csv(self.reference / "clients.csv")
        fused = clients[clients["status"] == "fused"].sort_values("round")
        labels = [c for c in clients.columns if c.startswith("label_")]
        last = fused.groupby("client").last()
        return np.stack(
            [last.loc[int(c.split("-")[1]), labels].to_numpy(int) for c in self.clients]
        )

    def method_scores(self) -> dict[str, np.ndarray]:
        """Every method's ``(B, K)`` client scores on the traced inputs."""
        scores = pd.read_csv(self.reference / "scores.csv")
        scores = scores[scores["client"].isin(self.clients)]
        out = {
            m: self._matrix(scores[scores["method"] == m], "score")
            for m in APP_METHODS
            if (scores["method"] == m).any()
        }
        for name in sorted(set(self.estimates["estimator"])):
            if name.startswith("fedinfluence-"):
                rows = self.estimates[self.estimates["estimator"] == name]
                out[name] = -self._matrix(rows, "d_logit")
        predicted = self.keys["predicted_label"].to_numpy()
        out[LABEL_COUNTS] = self.label_counts[:, predicted].T.astype(np.float64)
        out[TRUTH] = self.truth["logprob"]
        return out

    def consistency(self) -> float:
        """Max |app's fedinfluence score - score from its saved estimates|."""
        scores = pd.read_csv(self.reference / "scores.csv")
        scores = scores[
            (scores["method"] == "fedinfluence") & scores["client"].isin(self.clients)
        ]
        if scores.empty:
            return float("nan")
        app = self._matrix(scores, "score")
        rows = self.estimates[self.estimates["estimator"] == "fedinfluence"]
        return float(np.abs(app + self._matrix(rows, "d_logit")).max())


# --------------------------------------------------------------- the tables


def per_input_rows(scenario: Scenario) -> pd.DataFrame:
    """One row per method and traced input (module docstring)."""
    true = scenario.keys["true_label"].to_numpy()
    predicted = scenario.keys["predicted_label"].to_numpy()
    counts = scenario.label_counts
    faulty = np.array([c in scenario.faulty for c in scenario.clients])
    frames = []
    for method, scores in scenario.method_scores().items():
        traced = scores.argmax(axis=1)
        frame = scenario.keys.copy()
        frame.insert(0, "method", method)
        frame.insert(0, "scenario", scenario.name)
        frame["traced_client"] = traced
        frame["true_top_client"] = scenario.truth["logprob"].argmax(axis=1)
        for truth in TRUTHS:
            frame[f"spearman_{truth}"] = rowwise_spearman(scores, scenario.truth[truth])
            frame[f"top1_{truth}"] = tie_aware_top1(scores, scenario.truth[truth])
        if not faulty.any():  # label-count metrics: correct predictions only
            frame["strict_correct"] = loc.strict_correct(traced, true, counts)
            frame["strict_chance"] = loc.strict_random_baseline(true, counts)
            frame["paper_correct"] = loc.paper_correct(traced, true, counts, 1)
            frame["paper_chance"] = loc.paper_random_baseline(true, counts, 1)
            frame["spearman_counts"] = rowwise_spearman(
                scores, counts[:, predicted].T.astype(np.float64)
            )
        else:  # a misprediction: the faulty client is the answer
            frame["faulty_correct"] = faulty[traced]
            frame["faulty_chance"] = faulty.mean()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


SUMMARY_MEANS = (
    "top1_logprob",
    "top1_logit",
    "strict_correct",
    "strict_chance",
    "paper_correct",
    "paper_chance",
    "spearman_counts",
    "faulty_correct",
    "faulty_chance",
)


def summarize(per_input: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Means of the per-input columns per ``by`` group (rho with an interval)."""
    rows = []
    for keys, group in per_input.groupby(list(by), sort=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        for truth in TRUTHS:
            mean, half, n = mean_interval(group[f"spearman_{truth}"].to_numpy())
            row[f"spearman_{truth}"] = mean
            row[f"spearman_{truth}_ci95"] = half
            row[f"spearman_{truth}_n"] = n
        row["num_inputs"] = len(group)
        for column in SUMMARY_MEANS:
            if column in group:
                row[column] = float(pd.to_numeric(group[column]).mean())
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame


def fedinfluence_check(scenario: Scenario) -> pd.DataFrame:
    """The Fed-Influence paper's check per estimator and round (module doc)."""
    fip = scenario.estimates_fip.copy()
    # round-loo tracks nothing: split it on the reference estimator's blocks.
    reference_blocks = set(
        fip[(fip["estimator"] == "fedinfluence") & fip["tracked"]]["block"]
    )
    loo = fip["estimator"] == "round-loo"
    fip.loc[loo, "tracked"] = fip.loc[loo, "block"].isin(reference_blocks)
    fip["err2"] = fip["err_norm"] ** 2
    fip["true2"] = fip["true_norm"] ** 2
    fip["est2"] = fip["est_norm"] ** 2
    rows = []
    true_test = scenario.test_effects.set_index(["round", "client"])["d_test_loss"]
    true_effects = scenario.effects.set_index(["round", "input_index", "client"])
    for (estimator, rnd), group in fip.groupby(["estimator", "round"]):
        row: dict[str, Any] = {
            "scenario": scenario.name,
            "estimator": estimator,
            "round": rnd,
        }
        for part, mask in (
            ("all", np.ones(len(group), bool)),
            ("tracked", group["tracked"].to_numpy(bool)),
            ("untracked", ~group["tracked"].to_numpy(bool)),
        ):
            sub = group[mask]
            if sub.empty:
                row[f"rel_error_{part}"] = float("nan")
                row[f"cosine_{part}"] = float("nan")
                continue
            per_client = sub.groupby("client")[["err2", "true2", "est2", "dot"]].sum()
            rel = np.sqrt(per_client["err2"] / per_client["true2"])
            cos = per_client["dot"] / np.sqrt(per_client["est2"] * per_client["true2"])
            row[f"rel_error_{part}"] = float(rel.mean())
            row[f"cosine_{part}"] = float(cos.mean())
        row["truncated_blocks"] = int(group["truncated"].sum())
        est_test = scenario.estimates_test[
            (scenario.estimates_test["estimator"] == estimator)
            & (scenario.estimates_test["round"] == rnd)
        ].set_index(["round", "client"])["d_test_loss"]
        row["pearson_test_loss"] = pearson(
            est_test.to_numpy(), true_test.loc[est_test.index].to_numpy()
        )
        est = scenario.estimates[
            (scenario.estimates["estimator"] == estimator)
            & (scenario.estimates["round"] == rnd)
        ].set_index(["round", "input_index", "client"])
        if est.empty:
            row["pearson_input_loss"] = float("nan")
        else:
            row["pearson_input_loss"] = pearson(
                est["d_logprob"].to_numpy(),
                true_effects.loc[est.index, "d_logprob"].to_numpy(),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def costs(study_dir: Path, scenarios: Sequence[Scenario]) -> pd.DataFrame:
    """Wall times of the runs, method seconds, Fed-Influence's cost per round."""
    timings_path = study_dir / "runs" / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        for run in sorted(p for p in scenario.runs_dir.iterdir() if p.is_dir()):
            info = json.loads((run / "run.json").read_text())
            server = _seconds_between(info.get("started"), info.get("finished"))
            row: dict[str, Any] = {
                "scenario": scenario.name,
                "kind": "run",
                "name": run.name,
                "server_seconds": server,
                "launcher_seconds": timings.get(f"{scenario.name}/{run.name}"),
            }
            rounds = pd.read_csv(run / "rounds.csv")
            if (
                "fedinfluence_payload_bytes_total" in rounds
                and rounds["fedinfluence_payload_bytes_total"].notna().any()
            ):
                for column in (
                    "fedinfluence_client_seconds_total",
                    "fedinfluence_server_seconds",
                ):
                    row[f"{column}_per_round"] = float(rounds[column].mean())
                for column in (
                    "fedinfluence_payload_bytes_total",
                    "fedinfluence_payload_bytes_max",
                    "fedinfluence_state_bytes",
                    "fedinfluence_peak_bytes",
                ):
                    name = column.replace("_bytes", "_mb")
                    row[f"{name}_per_round"] = float(rounds[column].mean()) / 2**20
                row["train_round_seconds"] = float(rounds["round_seconds"].mean())
            rows.append(row)
        methods = pd.read_csv(scenario.reference / "methods.csv")
        num_rounds = len(pd.read_csv(scenario.reference / "rounds.csv"))
        for method, group in methods.groupby("method", sort=False):
            # The cross-round methods report the seconds of their (shared)
            # accumulator over all rounds so far: fed every round, traced or not.
            total = (
                float(group["seconds"].iloc[-1])
                if method in CROSS_ROUND_METHODS
                else float(group["seconds"].sum())
            )
            per_round = (
                total / num_rounds
                if method in CROSS_ROUND_METHODS
                else float(group["seconds"].mean())
            )
            rows.append(
                {
                    "scenario": scenario.name,
                    "kind": "method",
                    "name": method,
                    "seconds_per_round": per_round,
                    "seconds_per_input": total / float(group["num_traced"].sum()),
                    "engine_calls_per_round": float(group["engine_calls"].mean()),
                    "forward_passes_per_round": float(group["forward_passes"].mean()),
                }
            )
    return pd.DataFrame(rows)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round(
        (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(),
        1,
    )


def feddebug_rows(scenario: Scenario) -> pd.DataFrame:
    """FedDebug's localization per traced faulty round (``rounds.csv``)."""
    rounds = pd.read_csv(scenario.reference / "rounds.csv")
    value = pd.to_numeric(rounds.get("feddebug_accuracy"), errors="coerce")
    keep = value.notna()
    return pd.DataFrame(
        {
            "scenario": scenario.name,
            "round": rounds.loc[keep, "round"],
            "feddebug_accuracy": value[keep],
            "chance": 1 / scenario.num_clients,
        }
    )


# -------------------------------------------------------------------- report


def markdown(frame: pd.DataFrame, columns: Sequence[str], digits: int = 2) -> str:
    """A Markdown table of ``columns`` (numbers rounded)."""
    shown = frame[[c for c in columns if c in frame]]
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---" for _ in shown.columns) + "|",
    ]
    for _, row in shown.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float):
                cells.append("" if np.isnan(value) else f"{value:.{digits}f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out: Path,
    summary: pd.DataFrame,
    check: pd.DataFrame,
    cost: pd.DataFrame,
    feddebug: pd.DataFrame,
    notes: Mapping[str, Any],
) -> str:
    """``summary.md``: the tables the README section quotes."""
    parts = ["# Attribution methods vs. retraining ground truth\n"]
    for scenario, group in summary.groupby("scenario", sort=False):
        parts.append(f"## Scenario `{scenario}`\n")
        columns = [
            "method",
            "num_inputs",
            "spearman_logprob",
            "spearman_logprob_ci95",
            "top1_logprob",
            "spearman_logit",
            "top1_logit",
            "strict_correct",
            "strict_chance",
            "spearman_counts",
        ]
        if "faulty_correct" in group and group["faulty_correct"].notna().any():
            columns += ["faulty_correct", "faulty_chance"]
        parts.append(markdown(group, columns) + "\n")
        fd = feddebug[feddebug["scenario"] == scenario]
        if not fd.empty:
            parts.append(
                f"FedDebug: faulty client found in {fd['feddebug_accuracy'].mean():.2f}"
                f" of {len(fd)} traced rounds (chance {fd['chance'].iloc[0]:.2f}).\n"
            )
    parts.append("## Fed-Influence's own check (estimated vs. true FIP / FIL)\n")
    parts.append(
        markdown(
            check,
            [
                "scenario",
                "estimator",
                "round",
                "rel_error_all",
                "cosine_all",
                "rel_error_tracked",
                "cosine_tracked",
                "truncated_blocks",
                "pearson_test_loss",
                "pearson_input_loss",
            ],
        )
        + "\n"
    )
    parts.append("## Costs\n")
    parts.append(
        markdown(
            cost,
            [
                "scenario",
                "kind",
                "name",
                "server_seconds",
                "launcher_seconds",
                "seconds_per_round",
                "fedinfluence_client_seconds_total_per_round",
                "fedinfluence_payload_mb_total_per_round",
                "fedinfluence_server_seconds_per_round",
                "fedinfluence_peak_mb_per_round",
            ],
            digits=2,
        )
        + "\n"
    )
    parts.append("## Checks\n")
    parts += [f"- {key}: {value}" for key, value in notes.items()]
    text = "\n".join(parts) + "\n"
    write_text(out / "summary.md", text)
    return text


def plot(
    out: Path,
    summary: pd.DataFrame,
    by_round: pd.DataFrame,
    check: pd.DataFrame,
    feddebug: pd.DataFrame,
    num_clients: int,
) -> Path:
    """The study's figure (six panels; see the README)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 11))
    correct = summary[summary["scenario"] == "correct"]
    methods = [m for m in correct["method"] if m != TRUTH]
    y = np.arange(len(methods))
    ax = axes[0, 0]
    rows = correct.set_index("method").loc[methods]
    ax.barh(
        y - 0.2,
        rows["spearman_logprob"],
        0.4,
        xerr=rows["spearman_logprob_ci95"],
        label="vs. log-prob truth",
    )
    ax.barh(y + 0.2, rows["spearman_logit"], 0.4, label="vs. logit truth")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, methods)
    ax.invert_yaxis()
    ax.set_xlim(min(0.0, float(rows["spearman_logprob"].min()) - 0.1), 1.0)
    ax.set_xlabel("mean Spearman rho per input (chance 0; 95% interval)")
    ax.set_title("(a) rank agreement with retraining (correct)")
    ax.legend(**BELOW)

    ax = axes[0, 1]
    with_truth = [*methods, TRUTH]
    yb = np.arange(len(with_truth))
    rows = correct.set_index("method").loc[with_truth]
    ax.barh(yb - 0.2, rows["top1_logprob"], 0.4, label="top-1 = retraining's")
    ax.barh(yb + 0.2, rows["strict_correct"], 0.4, label="strict label-count metric")
    ax.axvline(1 / num_clients, color="C0", ls="--", lw=1, label="chance 1/K")
    ax.axvline(
        float(rows["strict_chance"].mean()),
        color="C1",
        ls=":",
        lw=1.2,
        label="strict chance",
    )
    ax.set_yticks(yb, with_truth)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel("share of traced inputs")
    ax.set_title("(b) top-1 vs. truth and vs. label counts (correct)")
    ax.legend(**BELOW)

    ax = axes[0, 2]
    per_round = by_round[by_round["scenario"] == "correct"]
    for method in methods:
        if method == LABEL_COUNTS:
            continue
        line = per_round[per_round["method"] == method]
        ax.plot(line["round"], line["spearman_logprob"], marker="o", label=method)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("mean Spearman rho vs. log-prob truth")
    ax.set_title("(c) agreement with retraining by round")
    ax.legend(**{**BELOW, "fontsize": 7})

    correct_check = check[check["scenario"] == "correct"]
    ax = axes[1, 0]
    for estimator, line in correct_check.groupby("estimator"):
        ax.plot(line["round"], line["rel_error_all"], marker="o", label=estimator)
    ax.set_yscale("log")
    ax.axhline(1, color="k", lw=0.8, ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel("||eps_est - eps_true|| / ||eps_true|| (mean over clients)")
    ax.set_title("(d) FIP error, all parameters (1 = no better than 0)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    for estimator, line in correct_check.groupby("estimator"):
        ax.plot(line["round"], line["pearson_test_loss"], marker="o", label=estimator)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("Pearson r over the clients of a round")
    ax.set_title("(e) estimated vs. true change of the test loss (FIL)")
    ax.legend(fontsize=7)

    ax = axes[1, 2]
    faulty = summary[summary["scenario"] == "faulty"]
    if "faulty_correct" in faulty and faulty["faulty_correct"].notna().any():
        names = list(faulty["method"])
        values = list(faulty["faulty_correct"])
        if not feddebug.empty:
            names.append("feddebug (per round)")
            values.append(float(feddebug["feddebug_accuracy"].mean()))
        yy = np.arange(len(names))
        ax.barh(yy, values, 0.6, color="C3")
        ax.axvline(1 / num_clients, color="k", ls="--", lw=1, label="chance 1/K")
        ax.set_yticks(yy, names)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
        ax.legend(**BELOW)
    ax.set_xlabel("share of mispredictions traced to the faulty client")
    ax.set_title("(f) faulty-client localization (faulty)")
    for ax in (axes[0, 2], axes[1, 0], axes[1, 1]):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    path = out / FIGURE
    fig.savefig(path, dpi=110, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------- main


def compare(study_dir: Path, copy_static: bool = True) -> Path:
    """Write every comparison table and the figure; return the output folder."""
    scenarios = [
        Scenario(p.name, p, study_dir / "ground_truth" / p.name)
        for p in sorted((study_dir / "runs").iterdir())
        if p.is_dir()
        and (study_dir / "ground_truth" / p.name / "manifest.json").is_file()
    ]
    if not scenarios:
        raise FileNotFoundError(
            f"no ground truth under {study_dir}; run tooling.retraining first"
        )
    out = study_dir / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    per_input = pd.concat([per_input_rows(s) for s in scenarios], ignore_index=True)
    write_csv(out / "per_input.csv", per_input.to_dict("records"), list(per_input))
    summary = summarize(per_input, ["scenario", "method"])
    write_csv(out / "summary.csv", summary.to_dict("records"), list(summary))
    by_round = summarize(per_input, ["scenario", "method", "round"])
    write_csv(out / "by_round.csv", by_round.to_dict("records"), list(by_round))
    check = pd.concat([fedinfluence_check(s) for s in scenarios], ignore_index=True)
    write_csv(out / "fedinfluence_check.csv", check.to_dict("records"), list(check))
    cost = costs(study_dir, scenarios)
    write_csv(out / "costs.csv", cost.to_dict("records"), list(cost))
    feddebug = pd.concat([feddebug_rows(s) for s in scenarios], ignore_index=True)
    notes: dict[str, Any] = {}
    for s in scenarios:
        checks = s.manifest["checks"]
        notes[f"{s.name}: round 1 retrained vs. round leave-one-out, max |diff|"] = (
            f"{checks['round1_retrained_vs_round_loo_max_abs']:.2e}"
        )
        notes[f"{s.name}: variants trained exactly as the reference"] = checks[
            "variant_final_model_equals_reference"
        ]
        notes[
            f"{s.name}: app's fedinfluence scores vs. saved estimates, max |diff|"
        ] = f"{s.consistency():.2e}"
        predicted = s.keys["predicted_label"].to_numpy()[:, None]
        flips = float((s.counterfactual_labels != predicted).mean())
        notes[f"{s.name}: share of input x client whose retrained prediction flips"] = (
            f"{flips:.3f}"
        )
    write_report(out, summary, check, cost, feddebug, notes)
    figure = plot(out, summary, by_round, check, feddebug, scenarios[0].num_clients)
    if copy_static:
        static = REPO_ROOT / "_static"
        static.mkdir(exist_ok=True)
        shutil.copy2(figure, static / FIGURE)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: compare every method with the study's ground truth."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="results/<study> written by tooling.retraining")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--no-static", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = compare((args.results / args.study).resolve(), not args.no_static)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
