"""Backdoor triggers and the poisoning of a client's own samples.

A backdoor client stamps a trigger on a fraction of its training samples and
relabels them to the target class, so that the federated model learns
"trigger -> target" while staying accurate on clean inputs (BadNets, Gu et al.
2017; for text a rare trigger token, Kurita et al. 2020). The server applies the
same trigger to its test inputs to measure the attack and to ask TraceFL who
taught it.

* :class:`ImageTrigger`: a ``size x size`` square at the bottom-right corner of
  every channel, set to the largest pixel value after normalisation
  (``(1 - mean_c) / std_c``), i.e. a white patch;
* :class:`TokenTrigger`: one vocabulary token inserted right after the first
  token (``[CLS]``), the rest shifted right; a full row keeps its last token
  (``[SEP]``) and drops the one before it.

Both return new tensors and never modify their input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Features = Tensor | dict[str, Tensor]


@dataclass(frozen=True)
class ImageTrigger:
    """A white ``size x size`` patch at the bottom-right corner.

    Attributes
    ----------
    size
        Side of the square in pixels (``1..H`` and ``1..W``).
    value
        Per-channel value of the patch (the normalised white: ``(1 - m) / s``).

    """

    size: int
    value: tuple[float, ...]

    @classmethod
    def white(
        cls, size: int, mean: Sequence[float], std: Sequence[float]
    ) -> ImageTrigger:
        """The patch at the largest pixel value of images normalised by mean/std."""
        return cls(size, tuple((1.0 - m) / s for m, s in zip(mean, std, strict=True)))

    def apply(self, images: Features) -> Tensor:
        """``(N, C, H, W)`` float images with the patch stamped on (a copy)."""
        if not isinstance(images, Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images)
            raise ValueError(f"an image trigger needs (N, C, H, W) images, got {got}")
        n, c, h, w = images.shape
        if not 1 <= self.size <= min(h, w):
            raise ValueError(
                f"trigger size {self.size} does not fit {h}x{w} images (1..{min(h, w)})"
            )
        if c != len(self.value):
            raise ValueError(
                f"the trigger has {len(self.value)} channel values, the images {c}"
            )
        out = images.clone()
        value = torch.tensor(self.value, dtype=images.dtype).view(1, c, 1, 1)
        out[:, :, h - self.size :, w - self.size :] = value
        return out


@dataclass(frozen=True)
class TokenTrigger:
    """One token inserted at ``position`` (default 1: right after ``[CLS]``).

    Attributes
    ----------
    token_id
        Vocabulary id of the trigger token.
    position
        Index it is inserted at (``>= 1``, so the first token stays first).

    """

    token_id: int
    position: int = 1

    def apply(self, features: Features) -> dict[str, Tensor]:
        """``input_ids``/``attention_mask`` (N, L) with the token inserted (a copy).

        The sequence length ``L`` is kept: a row with padding grows into it; a
        full row drops its second-to-last token so that its last one (``[SEP]``)
        stays last.
        """
        if not isinstance(features, Mapping) or not {
            "input_ids",
            "attention_mask",
        } <= set(features):
            raise ValueError(
                "a token trigger needs a mapping with input_ids and attention_mask"
            )
        ids, mask = features["input_ids"], features["attention_mask"]
        if ids.dim() != 2 or ids.shape != mask.shape:
            raise ValueError(
                f"input_ids {tuple(ids.shape)} and attention_mask "
                f"{tuple(mask.shape)} must both be (N, L)"
            )
        n, length = ids.shape
        if not 1 <= self.position < length:
            raise ValueError(
                f"trigger position {self.position} is not inside rows of length "
                f"{length} (1..{length - 1})"
            )
        new_ids, new_mask = ids.clone(), mask.clone()
        for row in range(n):
            used = int(mask[row].sum())
            real = ids[row, :used].tolist()
            at = min(self.position, used)
            row_ids = real[:at] + [self.token_id] + real[at:]
            if len(row_ids) > length:  # full row: keep the last token last
                row_ids = row_ids[: length - 1] + row_ids[-1:]
            new_ids[row, : len(row_ids)] = torch.tensor(row_ids, dtype=ids.dtype)
            new_mask[row, : len(row_ids)] = 1
        out = {k: v for k, v in features.items() if k not in ("input_ids",)}
        out["input_ids"], out["attention_mask"] = new_ids, new_mask
        return out


Trigger = ImageTrigger | TokenTrigger


def backdoor_label_map(target: int, num_classes: int) -> dict[int, int]:
    """``{c: target}`` for every other class: the misprediction a backdoor teaches."""
    if not 0 <= target < num_classes:
        raise ValueError(f"target {target} is not a class in 0..{num_classes - 1}")
    return {c: target for c in range(num_classes) if c != target}


def select_rows(features: Features, rows: Tensor) -> Features:
    """Rows of a tensor or of every tensor of a mapping."""
    if isinstance(features, Mapping):
        return {k: v[rows] for k, v in features.items()}
    return features[rows]


def poison_samples(
    features: Features,
    labels: Tensor,
    trigger: Trigger,
    target: int,
    fraction: float,
    seed: int,
) -> tuple[Features, Tensor, np.ndarray]:
    """Stamp ``trigger`` on a random ``fraction`` of the samples, relabel to target.

    Parameters
    ----------
    features
        ``(N, ...)`` tensor or mapping of ``(N, L)`` tensors (a client's data).
    labels
        ``(N,)`` int64 labels.
    trigger, target
        The trigger and the class the poisoned samples are relabelled to.
    fraction
        Share of the ``N`` samples poisoned, in ``(0, 1]``: ``round(fraction * N)``
        samples (at least one), drawn without replacement.
    seed
        Seed of the draw (the same client poisons the same samples every round).

    Returns
    -------
    features, labels, poisoned
        New tensors of the same shapes, and the sorted ``(P,)`` indices poisoned.

    """
    n = int(labels.shape[0])
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in (0, 1]")
    if n == 0:
        return features, labels.clone(), np.empty(0, dtype=np.int64)
    count = max(1, round(fraction * n))
    rng = np.random.default_rng(seed)
    poisoned = np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
    rows = torch.as_tensor(poisoned)
    stamped = trigger.apply(select_rows(features, rows))
    if isinstance(features, Mapping):
        assert isinstance(stamped, Mapping)
        out: Features = {k: v.clone() for k, v in features.items()}
        for key, value in stamped.items():
            out[key][rows] = value
    else:
        out = features.clone()
        out[rows] = stamped
    new_labels = labels.clone()
    new_labels[rows] = int(target)
    return out, new_labels, poisoned


def triggered_inputs(
    features: Features, labels: Tensor, trigger: Trigger, target: int
) -> tuple[Features, np.ndarray]:
    """Every input with the trigger, and the indices whose true label is not target.

    The server's triggered test set keeps the clean set's order (index ``i`` is
    test input ``i`` with the trigger), so one index names both.
    """
    eligible = np.flatnonzero(labels.cpu().numpy() != target).astype(np.int64)
    return trigger.apply(features), eligible
