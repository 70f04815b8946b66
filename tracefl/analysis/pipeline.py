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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tracefl.analysis.attribute import Attribute
from tracefl.analysis.backdoor_step import (
    MeasureBackdoor,
    analysis_config,
    triggered_test_set,
)
from tracefl.analysis.context import RoundContext
from tracefl.analysis.evaluate import EvaluateGlobal
from tracefl.analysis.feddebug_step import RunFedDebug
from tracefl.analysis.fedinfluence_step import TrackFedInfluence
from tracefl.analysis.methods import MethodSuite
from tracefl.analysis.observe import ObserveRound
from tracefl.analysis.participation import RecordParticipation
from tracefl.analysis.recorder import Recorder
from tracefl.analysis.save_models import SaveModels
from tracefl.analysis.score import ScoreAttributions
from tracefl.analysis.select import SelectInputs
from tracefl.analysis.step import AnalysisStep
from tracefl.config import TraceFLConfig, sampled_train_nodes
from tracefl.dataset import LabeledTensors
from tracefl.fedinfluence_estimates import ESTIMATES_DIR
from tracefl.model_store import ModelStore
from tracefl.output_dir import CUMULATIVE_DIR
from tracefl.strategy import RoundOutcome

log = logging.getLogger("tracefl")


def default_steps(
    cfg: TraceFLConfig,
    suite: MethodSuite,
    model_factory: Callable[[], nn.Module],
    federation_size: int,
    store: ModelStore,
    triggered: LabeledTensors | None = None,
    out_dir: Path | None = None,
) -> tuple[AnalysisStep, ...]:
    """A run's analysis steps, in order (fresh objects: some keep state).

    Built before training, so that every method's settings (and Fed-Influence's
    memory budget) are checked before the first round. ``triggered``: the
    backdoor mode's triggered test set (:mod:`tracefl.analysis.backdoor_step`).
    ``out_dir`` is where Fed-Influence's estimates go when
    ``fedinfluence-save-estimates`` is on.
    """
    save_dir = (
        out_dir / ESTIMATES_DIR
        if out_dir is not None and cfg.fedinfluence_save_estimates
        else None
    )
    fedinfluence = (
        TrackFedInfluence(cfg, model_factory, federation_size, save_dir)
        if cfg.fedinfluence
        else None
    )
    steps: list[AnalysisStep] = [
        RecordParticipation(),
        EvaluateGlobal(),
        SaveModels(store),
    ]
    if triggered is not None:
        steps.append(MeasureBackdoor(triggered, cfg.backdoor_target))
    if fedinfluence is not None:
        steps.append(fedinfluence)
    steps += [
        ObserveRound(suite),
        SelectInputs(suite.queries),
        Attribute(suite, fedinfluence),
        ScoreAttributions(),
        RunFedDebug(),
    ]
    return tuple(steps)


def build_analyzer(
    cfg: TraceFLConfig,
    test_data: LabeledTensors,
    model_factory: Callable[[], nn.Module],
    device: torch.device,
    recorder: Recorder,
    federation_size: int,
) -> RoundAnalyzer:
    """The run's analyzer with :func:`default_steps` and its method suite.

    Backdoor mode: the analysis traces the triggered test inputs, with the
    backdoor clients as the planted ones (:func:`analysis_config`).
    """
    cfg = analysis_config(cfg)
    triggered = triggered_test_set(cfg, test_data) if cfg.backdoor_mode else None
    queries = test_data if triggered is None else triggered
    suite = MethodSuite(cfg, queries, device, recorder.out_dir / CUMULATIVE_DIR)
    store = ModelStore.for_run(
        cfg,
        recorder.out_dir,
        model_factory().state_dict(),
        sampled_train_nodes(cfg, federation_size),
    )
    steps = default_steps(
        cfg,
        suite,
        model_factory,
        federation_size,
        store,
        triggered=triggered,
        out_dir=recorder.out_dir,
    )
    return RoundAnalyzer(
        cfg, test_data, model_factory, device, recorder, steps, suite=suite, store=store
    )


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
    suite
        The methods whose state outlives the run (saved by :meth:`finish`).
    store
        Where the kept models go (the final one by :meth:`finish`).

    """

    def __init__(
        self,
        cfg: TraceFLConfig,
        test_data: LabeledTensors,
        model_factory: Callable[[], nn.Module],
        device: torch.device,
        recorder: Recorder,
        steps: Sequence[AnalysisStep],
        *,
        suite: MethodSuite | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.cfg = cfg
        self.test_data = test_data
        self.model_factory = model_factory
        self.device = device
        self.recorder = recorder
        self.steps = tuple(steps)
        self.suite = suite
        self.store = store
        self.last_round = 0
        self.last_state: dict[str, torch.Tensor] | None = None
        self.round_started = time.perf_counter()

    def finish(self) -> None:
        """Save what outlives the run: the cumulative store, the final model."""
        if self.suite is not None:
            self.suite.save()
        if self.store is not None and self.last_state is not None:
            self.store.save_final(self.last_state, self.last_round)

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
        if outcome.global_state is not None:
            self.last_round, self.last_state = ctx.server_round, outcome.global_state
        if ctx.status == "pending":  # no step traced and none said why
            ctx.status = "not-traced"
        ctx.row["round_seconds"] = round(time.perf_counter() - self.round_started, 4)
        if ctx.row.get("provenance_seconds") is not None:
            ctx.row["provenance_share"] = round(
                ctx.row["provenance_seconds"] / max(ctx.row["round_seconds"], 1e-9), 6
            )
        self.recorder.record_round(ctx)
        log.info(
            summary_line(
                {**ctx.row, "status": ctx.status}, ctx.method_rows, self.cfg.faulty_mode
            )
        )
        self.round_started = time.perf_counter()


#: Shown beside the paper's method in the per-round line, when enabled.
RECOMMENDED = "cross-round-unweighted"


def summary_line(
    row: dict[str, Any], method_rows: Sequence[dict[str, Any]], faulty_mode: bool
) -> str:
    """One log line per round: the paper's method and the recommended one."""
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
    text += f" | traced={row['num_traced']}"
    metric, chance = (
        ("faulty_accuracy", "faulty_random_baseline")
        if faulty_mode
        else ("strict_accuracy", "strict_random_baseline")
    )
    label = "faulty-localization" if faulty_mode else "strict"
    for m in method_rows:
        if m["method"] in ("paper", RECOMMENDED):
            text += f" {m['method']}: {label}={m[metric]:.0%} (random {m[chance]:.0%})"
    if not faulty_mode and row.get("paper_accuracy") is not None:
        text += f" paper-metric={row['paper_accuracy']:.0%}"
    if row.get("provenance_seconds") is not None:
        text += f" prov={row['provenance_seconds']:.2f}s"
    return text
