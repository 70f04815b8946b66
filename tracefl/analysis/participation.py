"""Who was sampled, who replied, who was fused, and why the others were not."""

from __future__ import annotations

from tracefl.analysis.context import RoundContext
from tracefl.attribution import FusedRound


class RecordParticipation:
    """Fill the round's participation columns and its ``clients.csv`` rows.

    Every sampled node gets a row: ``fused`` (with its reported histogram),
    ``rejected`` or ``failed`` (with the reason), ``excluded``
    (``exclude-partitions``: valid, dropped before aggregation) or ``timed-out``.
    """

    name = "participation"

    def __call__(self, ctx: RoundContext) -> None:
        """Record the round's participation."""
        out = ctx.outcome
        ctx.row.update(
            {
                "round": out.server_round,
                "sampled": len(out.sampled_nodes),
                "replied": len(out.sampled_nodes) - len(out.timed_out),
                "num_participants": len(out.accepted),
                "participants": ";".join(str(r.partition_id) for r in out.accepted),
                "rejected": len(out.rejected),
                "failed": len(out.failed),
                "timed_out": len(out.timed_out),
                "problems": " | ".join(p.reason for p in (*out.rejected, *out.failed)),
                "failure": out.failure or "",
                "unexplained_share": out.unexplained,
                "train_loss": _mean_loss(ctx),
                "noise_multiplier": ctx.cfg.noise_multiplier,
                "clipping_norm": ctx.cfg.clipping_norm,
            }
        )
        shares = fusion_shares(out.fused) if out.fused is not None else {}
        for rec in out.accepted:
            ctx.client_rows.append(
                {
                    "round": out.server_round,
                    "client": rec.partition_id,
                    "node_id": rec.node_id,
                    "status": "fused",
                    "reason": "",
                    "num_examples": rec.num_examples,
                    "train_loss": rec.train_loss,
                    "fusion_share": shares.get(rec.client_id),
                    **{
                        f"label_{c}": int(n)
                        for c, n in enumerate(rec.label_counts.tolist())
                    },
                }
            )
        for status, problems in (
            ("rejected", out.rejected),
            ("failed", out.failed),
            ("excluded", out.excluded),
        ):
            for problem in problems:
                ctx.client_rows.append(
                    {
                        "round": out.server_round,
                        "client": problem.partition_id,
                        "node_id": problem.node_id,
                        "status": status,
                        "reason": problem.reason,
                    }
                )
        for node in out.timed_out:
            ctx.client_rows.append(
                {
                    "round": out.server_round,
                    "node_id": node,
                    "status": "timed-out",
                    "reason": "no reply within round-timeout",
                }
            )
        if out.failure:
            ctx.stop("failed")


def fusion_shares(fused: FusedRound) -> dict[str, float]:
    """Each client's share ``A_k`` averaged over every coordinate of the model.

    ``p_k`` for FedAvg; 1 for the client Krum selected and 0 for the others;
    the fraction of coordinates a client supplies under the median. Over the
    clients they add up to the aggregator's gain on the client models (1 for
    averaging aggregators).
    """
    total = sum(t.numel() for t in fused.previous.values())
    return {
        cid: round(
            sum(
                float(share[k].double().expand(fused.previous[k].shape).sum())
                for k in fused.previous
            )
            / total,
            6,
        )
        for cid, share in zip(fused.client_ids, fused.shares, strict=True)
    }


def _mean_loss(ctx: RoundContext) -> float | None:
    """``num-examples``-weighted mean training loss of the fused clients."""
    recs = ctx.outcome.accepted
    if not recs:
        return None
    total = sum(r.num_examples for r in recs)
    return round(sum(r.train_loss * r.num_examples for r in recs) / total, 6)
