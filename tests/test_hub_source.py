"""Hub-schema local mirrors (``data-dir``) and the offline Hub path of ``load_hub``."""

from __future__ import annotations

import time
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tests.fixtures import write_cifar10, write_dbpedia14, write_yahoo_answers
from tracefl.registry import dataset_spec
from tracefl.sources.hub import (
    DataUnavailableError,
    hub_reachable,
    load_hub,
    normalise_columns,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _relayout(src: Path, dst: Path, layout: str) -> Path:
    """Copy a fixture's two parquet files into another mirror layout."""
    files = {s: next(src.rglob(f"{s}-*.parquet")) for s in ("train", "test")}
    for split, path in files.items():
        frame = pd.read_parquet(path)
        if layout == "flat":
            target = dst / f"{split}.parquet"
        elif layout == "data":
            target = dst / "data" / f"{split}-00000-of-00001.parquet"
        elif layout == "converter":  # refs/convert/parquet branch layout
            target = dst / "default" / split / "0000.parquet"
        elif layout == "csv":
            target = dst / f"{split}.csv"
        else:
            target = dst / f"{split}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        if layout == "csv":
            frame.to_csv(target, index=False)
        elif layout == "jsonl":
            frame.to_json(target, orient="records", lines=True)
        else:
            frame.to_parquet(target)
    return dst


@pytest.mark.parametrize("layout", ["flat", "data", "converter", "csv", "jsonl"])
def test_dbpedia_mirror_layouts_give_same_splits(layout: str, tmp_path: Path) -> None:
    hub_like = write_dbpedia14(tmp_path / "hub")
    spec = dataset_spec("dbpedia_14")
    reference = load_hub(spec, str(hub_like))
    other = load_hub(spec, str(_relayout(hub_like, tmp_path / layout, layout)))
    for split in ("train", "test"):
        assert getattr(other, split)["text"] == getattr(reference, split)["text"]
        assert getattr(other, split)["label"] == getattr(reference, split)["label"]


def test_hub_parquet_keeps_classlabel_schema(tmp_path: Path) -> None:
    data_dir = write_yahoo_answers(tmp_path / "data")
    splits = load_hub(dataset_spec("yahoo_answers_topics"), str(data_dir))
    label = splits.train.features["label"]
    assert isinstance(label, datasets.ClassLabel)
    assert label.names == list(dataset_spec("yahoo_answers_topics").label_names)
    cifar = load_hub(dataset_spec("cifar10"), str(write_cifar10(tmp_path / "c")))
    assert isinstance(cifar.train.features["image"], datasets.Image)
    assert cifar.train.features["label"].names == list(
        dataset_spec("cifar10").label_names
    )


def test_mirror_ignores_files_that_only_start_with_split_name(tmp_path: Path) -> None:
    data_dir = write_dbpedia14(tmp_path / "data")
    (data_dir / "trainer_state.json").write_text('{"step": 1}\n')
    (data_dir / "testing-notes.csv").write_text("a,b\n1,2\n")
    splits = load_hub(dataset_spec("dbpedia_14"), str(data_dir))
    assert len(splits.train) == 32 and len(splits.test) == 16


def test_mirror_errors_name_the_problem(tmp_path: Path) -> None:
    spec = dataset_spec("dbpedia_14")
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_hub(spec, str(tmp_path / "nowhere"))
    only_train = tmp_path / "only-train"
    only_train.mkdir()
    pd.DataFrame({"label": [0], "title": ["t"], "content": ["c"]}).to_parquet(
        only_train / "train.parquet"
    )
    with pytest.raises(DataUnavailableError, match="no 'test' file"):
        load_hub(spec, str(only_train))
    wrong = tmp_path / "wrong-schema"
    wrong.mkdir()
    for split in ("train", "test"):
        pd.DataFrame({"label": [0], "text": ["t"]}).to_parquet(
            wrong / f"{split}.parquet"
        )
    with pytest.raises(DataUnavailableError, match=r"lacks column\(s\) \['content'\]"):
        load_hub(spec, str(wrong))


def test_dbpedia_title_is_optional(tmp_path: Path) -> None:
    for split in ("train", "test"):
        pd.DataFrame({"label": [0, 3], "content": ["a firm", "a runner"]}).to_parquet(
            tmp_path / f"{split}.parquet"
        )
    splits = load_hub(dataset_spec("dbpedia_14"), str(tmp_path))
    assert splits.train["text"] == ["a firm", "a runner"]


def test_headerless_csv_is_named(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("1,Some Title,Some content\n2,T,C\n")
    with pytest.raises(DataUnavailableError, match="without a header row") as info:
        load_hub(dataset_spec("dbpedia_14"), str(tmp_path))
    assert "train.csv" in str(info.value)


def test_labels_out_of_range_are_named(tmp_path: Path) -> None:
    for split in ("train", "test"):
        pd.DataFrame(
            {"label": [0, 14], "title": ["a", "b"], "content": ["x", "y"]}
        ).to_parquet(tmp_path / f"{split}.parquet")
    with pytest.raises(DataUnavailableError, match=r"not class indices 0..13.*\[14\]"):
        load_hub(dataset_spec("dbpedia_14"), str(tmp_path))


def test_mixed_formats_and_mixed_datasets_are_refused(tmp_path: Path) -> None:
    hub_like = write_dbpedia14(tmp_path / "hub")  # hub/dbpedia_14/*.parquet
    mixed = _relayout(hub_like, tmp_path / "mixed", "flat")
    _relayout(hub_like, tmp_path / "mixed", "csv")
    with pytest.raises(DataUnavailableError, match="in 2 formats") as info:
        load_hub(dataset_spec("dbpedia_14"), str(mixed))
    assert "train.csv" in str(info.value) and "train.parquet" in str(info.value)
    two = tmp_path / "two"
    _relayout(hub_like, two / "a", "flat")
    _relayout(hub_like, two / "b", "flat")
    with pytest.raises(DataUnavailableError, match="in 2 places"):
        load_hub(dataset_spec("dbpedia_14"), str(two))


def test_parent_folder_reads_only_the_datasets_own_subfolder(tmp_path: Path) -> None:
    write_dbpedia14(tmp_path)  # tmp/dbpedia_14/...
    write_yahoo_answers(tmp_path)  # tmp/yahoo_answers_topics/...
    db = load_hub(dataset_spec("dbpedia_14"), str(tmp_path))
    yahoo = load_hub(dataset_spec("yahoo_answers_topics"), str(tmp_path))
    assert len(db.train) == 32 and len(yahoo.train) > 0
    assert set(db.train["text"]).isdisjoint(yahoo.train["text"])


def test_yahoo_label_column_is_renamed_even_next_to_a_label_column() -> None:
    table = datasets.Dataset.from_dict(
        {
            "id": [1, 2],
            "topic": [3, 7],
            "label": [0, 0],
            "question_title": ["q1", "q2"],
            "question_content": [None, "c2"],
            "best_answer": ["a1", "a2"],
        }
    )
    out = normalise_columns(table, dataset_spec("yahoo_answers_topics"))
    assert out["label"] == [3, 7]
    assert out["text"] == ["q1", "q2 c2"]
    with_answer = normalise_columns(
        table, dataset_spec("yahoo_answers_topics"), include_answer=True
    )
    assert with_answer["text"] == ["q1 a1", "q2 c2 a2"]


@pytest.mark.parametrize("name", ["dbpedia_14", "yahoo_answers_topics", "cifar10"])
def test_hub_without_mirror_fails_fast_offline(name: str) -> None:
    assert not hub_reachable()
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError) as info:
        load_hub(dataset_spec(name), "")
    assert time.perf_counter() - start < 5.0
    message = str(info.value)
    assert dataset_spec(name).hub_id in message and "data-dir" in message
