"""The fixed query inputs of cross-round methods.

Cross-round scores add one term per round on the *same* inputs and targets, so
the inputs are fixed before training: the first
``cross-round-queries-per-label`` test inputs of each label (in faulty mode: of
each flipped source label, attributed to the label it is flipped to, i.e. the
misprediction the faulty client teaches). Rounds then trace inputs from this
set only, so every traced input has a whole-training score.
"""

from __future__ import annotations

import numpy as np
import torch

from tracefl.config import TraceFLConfig


def query_indices(cfg: TraceFLConfig, labels: torch.Tensor) -> np.ndarray:
    """Sorted ``(Q,)`` int64 indices into the server test split."""
    labels_np = labels.cpu().numpy()
    wanted = sorted(cfg.label_flip_map) if cfg.faulty_mode else np.unique(labels_np)
    chosen = [
        np.flatnonzero(labels_np == label)[: cfg.cross_round_queries_per_label]
        for label in wanted
    ]
    if not chosen:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def query_targets(
    cfg: TraceFLConfig, labels: torch.Tensor, indices: np.ndarray
) -> torch.Tensor:
    """``(Q,)`` int64 class attributed for each query.

    The true label; in faulty mode the flip target of the (source) label.
    """
    true = labels[torch.as_tensor(indices)].to(torch.int64)
    if not cfg.faulty_mode:
        return true
    return torch.tensor([cfg.label_flip_map[int(y)] for y in true], dtype=torch.int64)
