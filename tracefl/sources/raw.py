"""What every raw-data source returns, and the error it raises when data is missing.

Kept apart from the loaders and from :mod:`tracefl.dataset` so that both can
import it without an import cycle (sources produce, the dataset layer consumes).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets


@dataclass(frozen=True)
class RawSplits:
    """Raw train pool and held-out test split of one dataset.

    Both have a ``label`` column (int) and an ``image`` (uint8 array, HxW or
    HxWxC, or PIL image) or ``text`` (str) column.
    """

    train: datasets.Dataset
    test: datasets.Dataset


class DataUnavailableError(RuntimeError):
    """The dataset's files cannot be found or fetched; the message says how to fix."""
