"""What the server does after each aggregation: evaluate, trace, score, record.

:class:`RoundAnalyzer` is the strategy's post-aggregation hook. For every round it
evaluates the global model on the server's test split; for the rounds chosen by
``provenance-rounds`` it selects inputs (correct predictions, or in faulty mode
the mispredictions the flipped labels explain), runs the neuron-provenance
engine on the global model and the round's client models, scores the traced
clients against the label counts the clients reported, optionally runs FedDebug
side by side, and rewrites the result CSVs atomically.

It never reads client data: ground truth comes only from the clients' replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from tracefl import localization as loc
from tracefl.config import TraceFLConfig
from tracefl.dataset import LabeledTensors
from tracefl.feddebug import feddebug_applicable, localize_faulty_clients
from tracefl.provenance import NeuronProvenance, ProvenanceInputError
from tracefl.provenance.validation import check_finite_state
from tracefl.registry import dataset_num_classes
from tracefl.results_io import write_csv
from tracefl.strategy import ClientRecord
from tracefl.train import predict

log = logging.getLogger("tracefl")

ROUND_COLUMNS = (
    "round",
    "status",
    "num_participants",
    "participants",
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
    "noise_multiplier",
    "clipping_norm",
    "provenance_seconds",
    "provenance_seconds_per_input",
    "feddebug_seconds",
    "round_seconds",
    "provenance_share",
)
TIMING_COLUMNS = (
    "provenance_seconds",
    "provenance_seconds_per_input",
    "feddebug_seconds",
    "round_seconds",
    "provenance_share",
)


def input_columns(num_clients: int) -> tuple[str, ...]:
    """Per-input CSV columns: one probability column per client of the federation."""
    return (
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
        *(f"prob_client-{i}" for i in range(num_clients)),
    )


@dataclass
class RoundAnalyzer:
    """Post-aggregation hook ``(round, global_arrays, client_records) -> None``.

    Parameters
    ----------
    cfg
        The run's validated configuration.
    test_data
        The server's held-out test split.
    model_factory
        Builds a fresh model of the run's architecture (weights are loaded).
    device
        Where evaluation and provenance run.
    """

    cfg: TraceFLConfig
    test_data: LabeledTensors
    model_factory: Callable[[], nn.Module]
    device: torch.device
    round_rows: list[dict[str, Any]] = field(default_factory=list)
    input_rows: list[dict[str, Any]] = field(default_factory=list)
    client_rows: list[dict[str, Any]] = field(default_factory=list)
    round_started: float = field(default_factory=time.perf_counter)

    def __call__(
        self, server_round: int, arrays: ArrayRecord, records: list[ClientRecord]
    ) -> None:
        """Analyse one round and rewrite the CSVs."""
        records = sorted(records, key=lambda r: r.partition_id)
        for rec in records:
            self.client_rows.append(
                {
                    "round": server_round,
                    "client": rec.partition_id,
                    "num_examples": rec.num_examples,
                    **{
                        f"label_{c}": int(n)
                        for c, n in enumerate(rec.label_counts.tolist())
                    },
                }
            )
        model = self.model_factory()
        model.load_state_dict(arrays.to_torch_state_dict())
        losses, preds = predict(model, self.test_data, 256, self.device)
        accuracy = (preds == self.test_data.labels).float().mean().item()
        row: dict[str, Any] = {
            "round": server_round,
            "status": "not-traced",
            "num_participants": len(records),
            "participants": ";".join(str(r.partition_id) for r in records),
            "test_accuracy": round(accuracy, 6),
            "test_loss": round(losses.mean().item(), 6),
            "num_traced": 0,
            "noise_multiplier": self.cfg.noise_multiplier,
            "clipping_norm": self.cfg.clipping_norm,
        }
        traced_rounds = self.cfg.provenance_round_set()
        wanted = self.cfg.provenance and (
            traced_rounds is None or server_round in traced_rounds
        )
        if wanted and records:
            row.update(self._trace(server_round, model, preds, records))
        row["round_seconds"] = round(time.perf_counter() - self.round_started, 4)
        if row.get("provenance_seconds") is not None:
            row["provenance_share"] = round(
                row["provenance_seconds"] / max(row["round_seconds"], 1e-9), 6
            )
        self.round_rows.append(row)
        self.write()
        log.info(summary_line(row, self.cfg.faulty_mode))
        self.round_started = time.perf_counter()

    # ------------------------------------------------------------------ tracing

    def _trace(
        self,
        server_round: int,
        model: nn.Module,
        preds: torch.Tensor,
        records: list[ClientRecord],
    ) -> dict[str, Any]:
        cfg = self.cfg
        counts = np.stack([r.label_counts for r in records])  # (K, C)
        labels = self.test_data.labels
        if cfg.faulty_mode:
            idx = loc.select_faulty_inputs(
                labels, preds, cfg.label_flip_map, cfg.faulty_max_inputs
            )
        else:
            held = np.flatnonzero(counts.sum(axis=0) >= cfg.label_min_count)
            idx = loc.select_correct_inputs(
                labels,
                preds,
                held.tolist(),
                cfg.provenance_inputs_per_label,
                cfg.provenance_max_inputs,
            )
        out: dict[str, Any] = {}
        faulty_ids = [
            r.partition_id for r in records if r.partition_id in cfg.faulty_client_ids
        ]
        if cfg.faulty_mode:
            out["faulty_participants"] = ";".join(str(i) for i in faulty_ids)
        if len(idx) == 0:
            out["status"] = "no-eligible-inputs"
            log.info("Round %d: no eligible input to trace.", server_round)
            return out
        if cfg.faulty_mode and not faulty_ids:
            out["status"] = "no-faulty-participant"
            return out
        try:
            check_finite_state(model.state_dict(), "global model")
        except ProvenanceInputError as err:
            # Training diverged (e.g. under heavy DP noise): there is nothing to
            # attribute. Record it and let the federation go on.
            out["status"] = "global-model-not-finite"
            log.warning("Round %d: %s; not traced.", server_round, err)
            return out

        log.info(
            "Round %d: provenance on %d inputs over %d clients...",
            server_round,
            len(idx),
            len(records),
        )
        start = time.perf_counter()
        client_states = [r.arrays.to_torch_state_dict() for r in records]
        engine = NeuronProvenance(
            model,
            client_states,
            [r.num_examples for r in records],
            [r.client_id for r in records],
            decay=cfg.beta_decay,
            enable_beta=cfg.enable_beta,
            scale_by_data_share=cfg.client_weights_normalization,
            device=self.device,
            chunk_size=cfg.provenance_chunk_size,
        )
        result = engine.attribute(self.test_data.select_features(torch.as_tensor(idx)))
        seconds = time.perf_counter() - start

        traced = result.traced.cpu().numpy()
        true = labels[idx].cpu().numpy()
        traced_ids = np.array([records[t].partition_id for t in traced])
        if cfg.faulty_mode:
            # Only "is the traced client faulty?" is meaningful for mispredictions.
            per_input = {"faulty_correct": np.isin(traced_ids, faulty_ids)}
            per_round = {"faulty_accuracy": float(per_input["faulty_correct"].mean())}
        else:
            per_input, per_round = label_metrics(
                traced,
                true,
                loc.rank_clients(result.probs),
                counts,
                cfg.label_min_count,
            )
        probs = result.probs.double().cpu().numpy()
        for b, test_index in enumerate(idx):
            row = {
                "round": server_round,
                "mode": "faulty" if cfg.faulty_mode else "correct",
                "input_index": int(test_index),
                "true_label": int(true[b]),
                "predicted_label": int(preds[test_index]),
                "traced_client": int(traced_ids[b]),
                "traced_probability": round(float(probs[b, traced[b]]), 6),
                "provenance_seconds": round(seconds / len(idx), 6),
                **{name: bool(values[b]) for name, values in per_input.items()},
            }
            for k, rec in enumerate(records):
                row[f"prob_client-{rec.partition_id}"] = round(float(probs[b, k]), 6)
            self.input_rows.append(row)

        out.update(
            {
                "status": "traced",
                "num_traced": len(idx),
                **{name: round(value, 6) for name, value in per_round.items()},
                "provenance_seconds": round(seconds, 4),
                "provenance_seconds_per_input": round(seconds / len(idx), 6),
            }
        )
        if cfg.faulty_mode:
            out["faulty_random_baseline"] = round(
                loc.faulty_random_baseline(len(faulty_ids), len(records)), 6
            )
            out.update(self._feddebug(model, records, client_states, faulty_ids))
        return out

    def _feddebug(
        self,
        model: nn.Module,
        records: list[ClientRecord],
        client_states: list[dict[str, torch.Tensor]],
        faulty_ids: list[int],
    ) -> dict[str, Any]:
        """Run FedDebug on the same round (image models only, else ``n/a``)."""
        cfg = self.cfg
        if not cfg.feddebug or not feddebug_applicable(model):
            return {"feddebug_accuracy": "n/a", "feddebug_suspects": "n/a"}
        if len(records) < 2 or len(faulty_ids) >= len(records):
            return {"feddebug_accuracy": "n/a", "feddebug_suspects": "n/a"}
        models = []
        for state in client_states:
            client_model = self.model_factory()
            client_model.load_state_dict(state)
            models.append(client_model)
        input_shape = tuple(self.test_data.select_features(0).shape)
        result = localize_faulty_clients(
            models,
            [str(r.partition_id) for r in records],
            input_shape,
            num_faulty=len(faulty_ids),
            num_inputs=cfg.feddebug_num_inputs,
            na_threshold=cfg.feddebug_na_threshold,
            seed=cfg.seed,
            device=self.device,
        )
        found = {int(c) for c in result.faulty_client_ids}
        return {
            "feddebug_accuracy": round(
                len(found & set(faulty_ids)) / len(faulty_ids), 6
            ),
            "feddebug_suspects": ";".join(result.faulty_client_ids),
            "feddebug_seconds": round(result.seconds, 4),
        }

    # ------------------------------------------------------------------ output

    def write(self) -> None:
        """Atomically rewrite ``rounds.csv``, ``inputs.csv`` and ``clients.csv``."""
        out_dir = self.cfg.resolved_output_dir()
        write_csv(out_dir / "rounds.csv", self.round_rows, ROUND_COLUMNS)
        write_csv(
            out_dir / "inputs.csv", self.input_rows, input_columns(self.cfg.num_clients)
        )
        num_classes = dataset_num_classes(self.cfg.dataset)
        write_csv(
            out_dir / "clients.csv",
            self.client_rows,
            (
                "round",
                "client",
                "num_examples",
                *(f"label_{c}" for c in range(num_classes)),
            ),
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


def summary_line(row: dict[str, Any], faulty_mode: bool) -> str:
    """One log line per round."""
    text = (
        f"[round {row['round']}] clients={row['num_participants']} "
        f"test_acc={row['test_accuracy']:.4f} test_loss={row['test_loss']:.4f}"
    )
    if row.get("status") != "traced":
        return f"{text} provenance={row.get('status')}"
    if faulty_mode:
        text += (
            f" | faulty-localization={row['faulty_accuracy']:.2%} "
            f"(random {row['faulty_random_baseline']:.2%}) "
            f"feddebug={row.get('feddebug_accuracy')}"
        )
    else:
        text += (
            f" | traced={row['num_traced']} paper={row['paper_accuracy']:.2%} "
            f"(random {row['paper_random_baseline']:.2%}) "
            f"strict={row['strict_accuracy']:.2%} "
            f"(random {row['strict_random_baseline']:.2%})"
        )
    return text + f" prov={row['provenance_seconds']:.2f}s"
