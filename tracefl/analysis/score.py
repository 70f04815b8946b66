"""Score the traced clients against the label counts the clients reported."""

from __future__ import annotations

from typing import Any

import numpy as np

from tracefl import localization as loc
from tracefl.analysis.attribute import PAPER
from tracefl.analysis.context import RoundContext


class ScoreAttributions:
    """Per-input correctness and per-round localization accuracy, with chance.

    Correct mode: the paper, strict and strict top-k metrics
    (:mod:`tracefl.localization`). Faulty mode: whether the traced client is a
    faulty one (the only meaningful question for mispredictions).
    """

    name = "score"

    def __call__(self, ctx: RoundContext) -> None:
        """Fill the round's metric columns and its ``inputs.csv`` rows."""
        if ctx.status != "traced":
            return
        cfg = ctx.cfg
        result = ctx.attributions[PAPER]
        seconds = ctx.seconds[PAPER]
        records = ctx.records
        idx = ctx.selected
        traced = result.traced.cpu().numpy()
        true = ctx.test_data.labels[idx].cpu().numpy()
        traced_ids = np.array([records[t].partition_id for t in traced])
        if cfg.faulty_mode:
            faulty = ctx.faulty_participants
            per_input = {"faulty_correct": np.isin(traced_ids, faulty)}
            per_round = {
                "faulty_accuracy": float(per_input["faulty_correct"].mean()),
                "faulty_random_baseline": loc.faulty_random_baseline(
                    len(faulty), len(records)
                ),
            }
        else:
            per_input, per_round = label_metrics(
                traced,
                true,
                loc.rank_clients(result.probs),
                ctx.label_counts,
                cfg.label_min_count,
            )
        probs = result.probs.double().cpu().numpy()
        assert ctx.predictions is not None
        for b, test_index in enumerate(idx):
            row: dict[str, Any] = {
                "round": ctx.server_round,
                "mode": "faulty" if cfg.faulty_mode else "correct",
                "input_index": int(test_index),
                "true_label": int(true[b]),
                "predicted_label": int(ctx.predictions[test_index]),
                "traced_client": int(traced_ids[b]),
                "traced_probability": round(float(probs[b, traced[b]]), 6),
                "provenance_seconds": round(seconds / len(idx), 6),
                **{name: bool(values[b]) for name, values in per_input.items()},
            }
            for k, rec in enumerate(records):
                row[f"prob_client-{rec.partition_id}"] = round(float(probs[b, k]), 6)
            ctx.input_rows.append(row)
        ctx.row.update(
            {
                "num_traced": len(idx),
                **{name: round(value, 6) for name, value in per_round.items()},
                "provenance_seconds": round(seconds, 4),
                "provenance_seconds_per_input": round(seconds / len(idx), 6),
            }
        )


def label_metrics(
    traced: np.ndarray,
    true: np.ndarray,
    ranking: np.ndarray,
    counts: np.ndarray,
    min_count: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-input correctness and per-round accuracies for correct predictions.

    Parameters
    ----------
    traced, true
        (B,) traced participant index and true label of each input.
    ranking
        (B, K) participants by decreasing probability.
    counts
        (K, C) label histograms the participants reported.
    min_count
        ``label-min-count`` of the paper metric.

    """
    per_input = {
        "paper_correct": loc.paper_correct(traced, true, counts, min_count),
        "strict_correct": loc.strict_correct(traced, true, counts),
        "strict_top2": loc.strict_topk_hits(ranking, true, counts, 2),
        "strict_top3": loc.strict_topk_hits(ranking, true, counts, 3),
    }
    per_round = {
        "paper_accuracy": float(per_input["paper_correct"].mean()),
        "paper_random_baseline": float(
            loc.paper_random_baseline(true, counts, min_count).mean()
        ),
        "strict_accuracy": float(per_input["strict_correct"].mean()),
        "strict_random_baseline": float(
            loc.strict_random_baseline(true, counts).mean()
        ),
        "strict_top2": float(per_input["strict_top2"].mean()),
        "strict_top3": float(per_input["strict_top3"].mean()),
    }
    return per_input, per_round
