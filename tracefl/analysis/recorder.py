"""The one owner of a run's per-round result files.

``rounds.csv``, ``inputs.csv`` and ``clients.csv`` are written only here,
atomically, after every round, so a reader never sees a half-written file and
an interrupted run keeps every finished round (``run.json`` is
:mod:`tracefl.run_info`'s).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tracefl.analysis.context import RoundContext
from tracefl.results_io import write_csv

ROUND_COLUMNS = (
    "round",
    "status",
    "failure",
    "sampled",
    "replied",
    "num_participants",
    "participants",
    "rejected",
    "failed",
    "timed_out",
    "problems",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "num_traced",
    "paper_accuracy",
    "paper_random_baseline",
    "strict_accuracy",
    "strict_random_baseline",
    "strict_top2",
    "strict_top3",
    "faulty_participants",
    "faulty_accuracy",
    "faulty_random_baseline",
    "feddebug_accuracy",
    "feddebug_suspects",
    "attack_success_rate",
    "attack_success_baseline",
    "triggered_inputs",
    "noise_multiplier",
    "clipping_norm",
    "unexplained_share",
    "layer_set",
    "untraced_share",
    "provenance_seconds",
    "provenance_seconds_per_input",
    "attribution_seconds",
    "feddebug_seconds",
    "round_seconds",
    "provenance_share",
    "models_saved",
    "fedinfluence_server_seconds",
    "fedinfluence_client_seconds_total",
    "fedinfluence_client_seconds_max",
    "fedinfluence_payload_bytes_total",
    "fedinfluence_payload_bytes_max",
    "fedinfluence_state_bytes",
    "fedinfluence_peak_bytes",
    "fedinfluence_truncated_blocks",
)
TIMING_COLUMNS = (
    "provenance_seconds",
    "provenance_seconds_per_input",
    "attribution_seconds",
    "feddebug_seconds",
    "round_seconds",
    "provenance_share",
    "fedinfluence_server_seconds",
    "fedinfluence_client_seconds_total",
    "fedinfluence_client_seconds_max",
)
#: Columns that differ between two runs of the same config (times, Flower's
#: random node ids); everything else is reproducible bit for bit.
VOLATILE_COLUMNS = (*TIMING_COLUMNS, "node_id", "seconds")
INPUT_COLUMNS = (
    "round",
    "mode",
    "input_index",
    "true_label",
    "predicted_label",
    "traced_client",
    "traced_probability",
    "paper_correct",
    "strict_correct",
    "strict_top2",
    "strict_top3",
    "faulty_correct",
    "provenance_seconds",
)
METHOD_COLUMNS = (
    "round",
    "method",
    "num_traced",
    "num_clients",
    "strict_accuracy",
    "strict_random_baseline",
    "paper_accuracy",
    "paper_random_baseline",
    "strict_top2",
    "strict_top3",
    "decisive_share",
    "strict_decisive_accuracy",
    "strict_decisive_random_baseline",
    "graded_score",
    "graded_random_baseline",
    "spearman",
    "loo_agreement",
    "faulty_accuracy",
    "faulty_random_baseline",
    "pseudo_would_win",
    "untraced_share",
    "seconds",
    "engine_calls",
    "forward_passes",
)
SCORE_COLUMNS = ("round", "method", "input_index", "client", "score", "probability")
CLIENT_COLUMNS = (
    "round",
    "client",
    "node_id",
    "status",
    "reason",
    "num_examples",
    "train_loss",
    "fusion_share",
)


class Recorder:
    """Accumulate the rows of every round and rewrite the CSVs atomically.

    Parameters
    ----------
    out_dir
        The run's output directory (prepared by :func:`prepare_output_dir`).
    num_classes
        Number of label columns in ``clients.csv``.

    """

    def __init__(self, out_dir: Path, num_classes: int, methods: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.num_classes = num_classes
        self.methods = tuple(methods)
        self.round_rows: list[dict[str, Any]] = []
        self.input_rows: list[dict[str, Any]] = []
        self.client_rows: list[dict[str, Any]] = []
        self.method_rows: list[dict[str, Any]] = []
        self.score_rows: list[dict[str, Any]] = []

    def record_round(self, ctx: RoundContext) -> None:
        """Add one round's rows and rewrite the CSVs."""
        self.round_rows.append({**ctx.row, "status": ctx.status})
        self.input_rows.extend(ctx.input_rows)
        self.client_rows.extend(ctx.client_rows)
        self.method_rows.extend(ctx.method_rows)
        self.score_rows.extend(ctx.score_rows)
        self.write()

    @property
    def method_names(self) -> tuple[str, ...]:
        """Methods with at least one scored round, in the run's order."""
        seen = {row["method"] for row in self.method_rows}
        extra = sorted(seen - set(self.methods))  # e.g. fedinfluence
        return tuple(m for m in (*self.methods, *extra) if m in seen)

    @property
    def rounds_by_status(self) -> dict[str, int]:
        """Count of recorded rounds per status."""
        counts: dict[str, int] = {}
        for row in self.round_rows:
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def write(self) -> None:
        """Atomically rewrite every per-round CSV."""
        write_csv(self.out_dir / "rounds.csv", self.round_rows, ROUND_COLUMNS)
        clients = sorted(_seen_clients(self.input_rows))
        per_method = [
            f"{kind}_{m}" for m in self.method_names for kind in ("traced", "correct")
        ]
        write_csv(
            self.out_dir / "inputs.csv",
            self.input_rows,
            (*INPUT_COLUMNS, *per_method, *(f"prob_client-{c}" for c in clients)),
        )
        write_csv(self.out_dir / "methods.csv", self.method_rows, METHOD_COLUMNS)
        write_csv(self.out_dir / "scores.csv", self.score_rows, SCORE_COLUMNS)
        write_csv(
            self.out_dir / "clients.csv",
            self.client_rows,
            (*CLIENT_COLUMNS, *(f"label_{c}" for c in range(self.num_classes))),
        )


def _seen_clients(rows: Iterable[Mapping[str, Any]]) -> set[int]:
    prefix = "prob_client-"
    return {
        int(key[len(prefix) :]) for row in rows for key in row if key.startswith(prefix)
    }
