"""Score every method's traced clients against the label counts clients reported.

Ground truth comes only from the clients' replies: each client's label
histogram (the latest it reported). A method is scored against the clients it
ranks (a round's participants for per-round methods, every client seen so far
for cross-round ones), so each chance level is that of a uniformly random
choice among the same clients.

Correct mode: the paper metric (holds >= ``label-min-count`` of the label), the
strict metric (holds the most; top-2/3), strict on decisive inputs, the graded
score, Spearman's rho with the counts, and top-1 agreement with the round's
exact leave-one-out. Faulty mode: whether the traced client is a faulty one.
The paper method's answer also fills the round's headline columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracefl import localization as loc
from tracefl.analysis.context import RoundContext
from tracefl.analysis.methods import PAPER
from tracefl.attribution import AttributionResult

#: The exact counterfactual the other methods' agreement is measured against.
REFERENCE = "loo"


def partition_of(client_id: str) -> int:
    """``client-7`` -> 7."""
    return int(client_id.rsplit("-", 1)[1])


class ScoreAttributions:
    """Per-input correctness and per-round accuracy of every method, with chance."""

    name = "score"

    def __init__(self) -> None:
        #: Latest label histogram each client reported, by client id.
        self.label_counts: dict[str, np.ndarray] = {}

    def __call__(self, ctx: RoundContext) -> None:
        """Score ``ctx.attributions``; fill method rows, score rows, input rows."""
        for rec in ctx.records:
            self.label_counts[rec.client_id] = rec.label_counts
        if ctx.status != "traced":
            return
        idx = ctx.selected
        true = ctx.test_data.labels[idx].cpu().numpy()
        assert ctx.predictions is not None
        rows: list[dict[str, Any]] = [
            {
                "round": ctx.server_round,
                "mode": _mode(ctx),
                "input_index": int(i),
                "true_label": int(true[b]),
                "predicted_label": int(ctx.predictions[i]),
            }
            for b, i in enumerate(idx)
        ]
        reference = ctx.attributions.get(REFERENCE)
        for name, result in ctx.attributions.items():
            per_input, per_round = self.score(ctx, result, true, reference)
            traced_ids = [partition_of(c) for c in result.traced_client_ids]
            for b, row in enumerate(rows):
                row[f"traced_{name}"] = traced_ids[b]
                row[f"correct_{name}"] = bool(per_input["correct"][b])
            ctx.method_rows.append(
                {
                    "round": ctx.server_round,
                    "method": name,
                    "num_traced": len(idx),
                    "num_clients": result.num_clients,
                    **{k: _rounded(v) for k, v in per_round.items()},
                    "pseudo_would_win": float(result.pseudo_would_win.double().mean()),
                    "untraced_share": (
                        round(result.coverage.untraced_share, 6)
                        if result.coverage is not None
                        else None
                    ),
                    "seconds": round(result.seconds, 4),
                    "engine_calls": result.engine_calls,
                    "forward_passes": result.forward_passes,
                }
            )
            ctx.score_rows.extend(_score_rows(ctx.server_round, name, idx, result))
            if name == PAPER:
                self._headline(ctx, rows, result, per_input, per_round)
        ctx.input_rows.extend(rows)
        ctx.row["num_traced"] = len(idx)

    def score(
        self,
        ctx: RoundContext,
        result: AttributionResult,
        true: np.ndarray,
        reference: AttributionResult | None,
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per-input and per-round metrics of one method (see module docstring)."""
        counts = np.stack([self.label_counts[c] for c in result.client_ids])
        traced = result.traced.cpu().numpy()
        if ctx.cfg.faulty_mode:
            faulty = np.array(
                [
                    partition_of(c) in ctx.cfg.faulty_client_ids
                    for c in result.client_ids
                ]
            )
            correct = faulty[traced]
            return {"correct": correct}, {
                "faulty_accuracy": float(correct.mean()),
                "faulty_random_baseline": float(faulty.mean()),
            }
        min_count = ctx.cfg.label_min_count
        ranking = np.argsort(-result.client_scores.cpu().numpy(), axis=1, kind="stable")
        strict = loc.strict_correct(traced, true, counts)
        decisive = loc.strict_on_decisive(traced, true, counts)
        per_input = {
            "correct": strict,
            "paper_correct": loc.paper_correct(traced, true, counts, min_count),
            "strict_top2": loc.strict_topk_hits(ranking, true, counts, 2),
            "strict_top3": loc.strict_topk_hits(ranking, true, counts, 3),
        }
        per_round = {
            "strict_accuracy": float(strict.mean()),
            "strict_random_baseline": float(
                loc.strict_random_baseline(true, counts).mean()
            ),
            "paper_accuracy": float(per_input["paper_correct"].mean()),
            "paper_random_baseline": float(
                loc.paper_random_baseline(true, counts, min_count).mean()
            ),
            "strict_top2": float(per_input["strict_top2"].mean()),
            "strict_top3": float(per_input["strict_top3"].mean()),
            "decisive_share": decisive.share,
            "strict_decisive_accuracy": decisive.accuracy,
            "strict_decisive_random_baseline": decisive.chance,
            "graded_score": float(loc.graded_score(traced, true, counts).mean()),
            "graded_random_baseline": float(
                loc.graded_random_baseline(true, counts).mean()
            ),
            "spearman": float(
                np.nanmean(
                    loc.spearman_with_counts(
                        result.client_scores.cpu().numpy(), true, counts
                    )
                )
            )
            if result.num_clients > 1
            else float("nan"),
        }
        if reference is not None:
            mine = np.array(result.traced_client_ids)
            ref = np.array(reference.traced_client_ids)
            per_round["loo_agreement"] = float(loc.top1_agreement(mine, ref).mean())
        return per_input, per_round

    @staticmethod
    def _headline(
        ctx: RoundContext,
        rows: list[dict[str, Any]],
        result: AttributionResult,
        per_input: dict[str, np.ndarray],
        per_round: dict[str, float],
    ) -> None:
        """The paper method's answer in the round's and inputs' headline columns."""
        probs = result.probs
        seconds = result.seconds
        for b, row in enumerate(rows):
            k = int(result.traced[b])
            row["traced_client"] = partition_of(result.client_ids[k])
            row["traced_probability"] = (
                round(float(probs[b, k]), 6) if probs is not None else None
            )
            row["provenance_seconds"] = round(seconds / len(rows), 6)
            if ctx.cfg.faulty_mode:
                row["faulty_correct"] = bool(per_input["correct"][b])
            else:
                row["strict_correct"] = bool(per_input["correct"][b])
                for key in ("paper_correct", "strict_top2", "strict_top3"):
                    row[key] = bool(per_input[key][b])
            if probs is not None:
                for j, cid in enumerate(result.client_ids):
                    row[f"prob_client-{partition_of(cid)}"] = round(
                        float(probs[b, j]), 6
                    )
        headline = {
            key: per_round[key]
            for key in (
                "paper_accuracy",
                "paper_random_baseline",
                "strict_accuracy",
                "strict_random_baseline",
                "strict_top2",
                "strict_top3",
                "faulty_accuracy",
                "faulty_random_baseline",
            )
            if key in per_round
        }
        ctx.row.update({k: round(v, 6) for k, v in headline.items()})
        ctx.row["provenance_seconds"] = round(seconds, 4)
        ctx.row["provenance_seconds_per_input"] = round(seconds / len(rows), 6)
        if result.coverage is not None:
            ctx.row["layer_set"] = result.coverage.layer_set
            ctx.row["untraced_share"] = round(result.coverage.untraced_share, 6)


def _score_rows(
    server_round: int, method: str, idx: np.ndarray, result: AttributionResult
) -> list[dict[str, Any]]:
    """Long-format ``scores.csv`` rows: one per input, method and column."""
    scores = result.scores.cpu().numpy()
    probs = None if result.probs is None else result.probs.cpu().numpy()
    out = []
    for b, test_index in enumerate(idx):
        for j, cid in enumerate(result.column_ids):
            out.append(
                {
                    "round": server_round,
                    "method": method,
                    "input_index": int(test_index),
                    "client": cid,
                    "score": float(scores[b, j]),
                    "probability": (
                        float(probs[b, j])
                        if probs is not None and j < result.num_clients
                        else None
                    ),
                }
            )
    return out


def _mode(ctx: RoundContext) -> str:
    """``backdoor`` (planted backdoor clients), ``faulty`` or ``correct``."""
    if ctx.cfg.backdoor_mode:
        return "backdoor"
    return "faulty" if ctx.cfg.faulty_mode else "correct"


def _rounded(value: float) -> float:
    return round(value, 6) if np.isfinite(value) else value
