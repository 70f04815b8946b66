"""Backdoor mode: measure the attack, then trace the triggered test inputs.

With ``backdoor-clients`` set, the server stamps the run's trigger on every
input of its test split (index ``i`` stays test input ``i``) and asks: does the
global model output ``backdoor-target`` on triggered inputs of other classes,
and which client taught it that? The question has the shape of faulty mode
(a planted client teaches the misprediction "true label -> target"), so the
analysis reuses it through :func:`analysis_config`: the backdoor clients are the
planted clients and the misprediction map is ``{c: target for c != target}``.
Input selection (triggered inputs predicted as the target), the fixed query set
(triggered inputs per source label, attributed to the target), the scoring ("is
the traced client a backdoor client?", chance = their share of the clients a
method ranks), FedDebug and round leave-one-out (the ``loo`` method) then run
unchanged on the triggered inputs.

Per round, ``rounds.csv`` gains ``attack_success_rate`` (triggered inputs of
other classes predicted as the target), its chance level
``attack_success_baseline`` (the same clean inputs predicted as the target) and
``triggered_inputs``; ``test_accuracy`` stays the clean accuracy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tracefl.adversarial.setup import run_trigger
from tracefl.adversarial.trigger import backdoor_label_map, triggered_inputs
from tracefl.analysis.context import RoundContext
from tracefl.config import TraceFLConfig
from tracefl.dataset import LabeledTensors
from tracefl.registry import dataset_num_classes
from tracefl.train import predict


def analysis_config(cfg: TraceFLConfig) -> TraceFLConfig:
    """The configuration the per-round analysis sees (server side only).

    Unchanged without backdoor clients. With them, ``faulty_client_ids`` are the
    backdoor clients and ``label_flip_map`` maps every other class to the
    target, so that faulty mode's selection, queries and scoring trace the
    backdoor on the triggered inputs (the run-config keys are untouched).
    """
    if not cfg.backdoor_mode:
        return cfg
    return dataclasses.replace(
        cfg,
        faulty_client_ids=cfg.backdoor_client_ids,
        label_flip_map=backdoor_label_map(
            cfg.backdoor_target, dataset_num_classes(cfg.dataset)
        ),
    )


def triggered_test_set(cfg: TraceFLConfig, test: LabeledTensors) -> LabeledTensors:
    """The server's test split with the run's trigger on every input.

    Labels stay the true labels (the analysis compares them with the target).
    """
    features, _ = triggered_inputs(
        test.features, test.labels, run_trigger(cfg), cfg.backdoor_target
    )
    return LabeledTensors(features, test.labels.clone())


class MeasureBackdoor:
    """Attack success on the triggered inputs; then the analysis traces those.

    Runs after :class:`~tracefl.analysis.evaluate.EvaluateGlobal` (which
    measured the clean accuracy); replaces ``ctx.test_data``/``predictions``/
    ``losses`` by the triggered set's, so that every later step works on it.
    """

    name = "backdoor"

    def __init__(self, triggered: LabeledTensors, target: int) -> None:
        self.triggered = triggered
        self.target = int(target)
        labels = triggered.labels.cpu().numpy()
        self.eligible = np.flatnonzero(labels != self.target)

    def __call__(self, ctx: RoundContext) -> None:
        """Record the attack's success and hand the triggered inputs on."""
        if ctx.model is None or ctx.predictions is None:
            return
        losses, preds = predict(ctx.model, self.triggered, 256, ctx.device)
        rows = self.eligible
        hits = preds.numpy()[rows] == self.target
        clean = ctx.predictions.cpu().numpy()[rows] == self.target
        ctx.row["triggered_inputs"] = len(rows)
        ctx.row["attack_success_rate"] = round(float(hits.mean()), 6)
        ctx.row["attack_success_baseline"] = round(float(clean.mean()), 6)
        ctx.test_data, ctx.predictions, ctx.losses = self.triggered, preds, losses
