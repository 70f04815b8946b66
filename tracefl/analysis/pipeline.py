"""The per-round analysis: a fixed sequence of small steps and one recorder.

select inputs -> attribute -> score -> record, preceded by participation and
evaluation, followed by FedDebug. A new step is one new module plus a line in
:func:`default_steps` (steps may keep state across rounds, so each run builds
its own). The pipeline never reads client data: ground truth comes only from
the clients' replies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tracefl.analysis.attribute import Attribute
from tracefl.analysis.context import RoundContext
from tracefl.analysis.evaluate import EvaluateGlobal
from tracefl.analysis.feddebug_step import RunFedDebug
from tracefl.analysis.fedinfluence_step import TrackFedInfluence
from tracefl.analysis.participation import RecordParticipation
from tracefl.analysis.recorder import Recorder
from tracefl.analysis.score import ScoreAttributions
from tracefl.analysis.select import SelectInputs
from tracefl.analysis.step import AnalysisStep
from tracefl.config import TraceFLConfig
from tracefl.dataset import LabeledTensors
from tracefl.strategy import RoundOutcome

log = logging.getLogger("tracefl")


def default_steps(
    cfg: TraceFLConfig,
    model_factory: Callable[[], nn.Module],
    federation_size: int,
) -> tuple[AnalysisStep, ...]:
    """A run's analysis steps, in order (fresh objects: some keep state)."""
    steps: list[AnalysisStep] = [RecordParticipation(), EvaluateGlobal()]
    if cfg.fedinfluence:
        steps.append(TrackFedInfluence(cfg, model_factory, federation_size))
    steps += [SelectInputs(), Attribute(), ScoreAttributions(), RunFedDebug()]
    return tuple(steps)


class RoundAnalyzer:
    """The strategy's round hook: run the steps, record, log one line.

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
    recorder
        Owner of the result files.
    steps
        The analysis steps, in order (:func:`default_steps`).

    """

    def __init__(
        self,
        cfg: TraceFLConfig,
        test_data: LabeledTensors,
        model_factory: Callable[[], nn.Module],
        device: torch.device,
        recorder: Recorder,
        steps: Sequence[AnalysisStep],
    ) -> None:
        self.cfg = cfg
        self.test_data = test_data
        self.model_factory = model_factory
        self.device = device
        self.recorder = recorder
        self.steps = tuple(steps)
        self.round_started = time.perf_counter()

    def __call__(self, outcome: RoundOutcome) -> None:
        """Analyse one round and rewrite the result files."""
        ctx = RoundContext(
            cfg=self.cfg,
            outcome=outcome,
            test_data=self.test_data,
            model_factory=self.model_factory,
            device=self.device,
        )
        for step in self.steps:
            step(ctx)
        if ctx.status == "pending":  # no step traced and none said why
            ctx.status = "not-traced"
        ctx.row["round_seconds"] = round(time.perf_counter() - self.round_started, 4)
        if ctx.row.get("provenance_seconds") is not None:
            ctx.row["provenance_share"] = round(
                ctx.row["provenance_seconds"] / max(ctx.row["round_seconds"], 1e-9), 6
            )
        self.recorder.record_round(ctx)
        log.info(summary_line({**ctx.row, "status": ctx.status}, self.cfg.faulty_mode))
        self.round_started = time.perf_counter()


def summary_line(row: dict[str, Any], faulty_mode: bool) -> str:
    """One log line per round."""
    text = f"[round {row['round']}] clients={row['num_participants']}"
    if row.get("status") == "failed":
        return f"{text} FAILED: {row.get('failure')}"
    text += f" test_acc={row['test_accuracy']:.4f} test_loss={row['test_loss']:.4f}"
    if row.get("rejected") or row.get("failed") or row.get("timed_out"):
        text += (
            f" (not fused: rejected={row['rejected']} failed={row['failed']} "
            f"timed-out={row['timed_out']})"
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
