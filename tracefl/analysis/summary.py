"""A run's per-method summary for ``run.json``: whole run, early and converged.

Per method, over its traced rounds: the mean of the round accuracies with the
chance level beside it, the same split into converged and early rounds
(:func:`tracefl.localization.converged_rounds`: the final stretch of rounds
whose test accuracy stays within 2 points of the best), and a 95% interval that
counts (round, label) cells, not inputs, as the effective samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracefl import localization as loc
from tracefl.analysis.recorder import Recorder


def method_summary(recorder: Recorder, faulty_mode: bool) -> dict[str, Any]:
    """``{method: {...}}`` for every method with a scored round."""
    rounds = [r for r in recorder.round_rows if r.get("test_accuracy") is not None]
    converged: set[int] = set()
    if rounds:
        mask = loc.converged_rounds(
            [r["round"] for r in rounds], [r["test_accuracy"] for r in rounds]
        )
        converged = {r["round"] for r, keep in zip(rounds, mask, strict=True) if keep}
    metric = "faulty_accuracy" if faulty_mode else "strict_accuracy"
    chance = "faulty_random_baseline" if faulty_mode else "strict_random_baseline"
    out: dict[str, Any] = {"converged_rounds": sorted(converged)}
    for method in recorder.method_names:
        rows = [r for r in recorder.method_rows if r["method"] == method]
        entry: dict[str, Any] = {
            "traced_rounds": len(rows),
            metric: _mean(rows, metric),
            chance: _mean(rows, chance),
        }
        for part, keep in (("converged", True), ("early", False)):
            sub = [r for r in rows if (r["round"] in converged) == keep]
            entry[f"{metric}_{part}"] = _mean(sub, metric)
        inputs = [r for r in recorder.input_rows if f"correct_{method}" in r]
        if inputs:
            cells = loc.cell_interval(
                np.array([r[f"correct_{method}"] for r in inputs], dtype=float),
                np.zeros(len(inputs)),
                np.array([r["round"] for r in inputs]),
                np.array([r["true_label"] for r in inputs]),
                bounds=(0.0, 1.0),
            )
            entry["per_input"] = {
                "mean": cells.mean,
                "ci95": [cells.low, cells.high],
                "cells": cells.num_cells,
                "inputs": cells.num_inputs,
            }
        out[method] = entry
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    values = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(values)), 6) if values else None
