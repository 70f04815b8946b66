"""Writers of small fixture datasets in the exact Hub / medmnist file schemas.

Every writer creates files laid out as the real source does, so tests load them
through TraceFL's real loaders (``data-dir``):

* DBpedia-14 (``fancyzhx/dbpedia_14``):
  ``dbpedia_14/{train,test}-00000-of-00001.parquet`` with ``label``
  (ClassLabel, 14 names), ``title``, ``content``.
* Yahoo Answers Topics (``community-datasets/yahoo_answers_topics``):
  ``yahoo_answers_topics/{train,test}-00000-of-00001.parquet`` with ``id`` (int32),
  ``topic`` (ClassLabel, 10 names), ``question_title``, ``question_content``,
  ``best_answer``.
* CIFAR-10 (``uoft-cs/cifar10``): ``plain_text/{train,test}-00000-of-00001.parquet``
  with ``img`` (Image, PNG bytes) and ``label`` (ClassLabel, 10 names).
* MedMNIST: ``<flag>.npz`` (``<flag>_<size>.npz``) with ``{train,val,test}_images``
  uint8 (N, H, W[, 3]) and ``{train,val,test}_labels`` uint8 (N, 1).

Parquet files are written with ``datasets.Dataset.to_parquet`` from datasets with
explicit ``Features``, so they carry the same Hugging Face schema metadata as the
Hub's parquet exports. The data is *learnable*: texts carry class-specific
keywords and images class-specific colours/patterns, so a model trained for a
round or two predicts some test inputs correctly.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from tracefl.registry import CIFAR10_LABELS as CIFAR10_NAMES
from tracefl.registry import DBPEDIA14_LABELS as DBPEDIA14_NAMES
from tracefl.registry import YAHOO_LABELS as YAHOO_NAMES

# Class-specific keywords (real English words, so WordPiece keeps them whole).
DBPEDIA14_WORDS = (
    ("company", "corporation", "business", "shares", "revenue"),
    ("university", "college", "school", "students", "campus"),
    ("painter", "singer", "artist", "musician", "sculptor"),
    ("football", "player", "athlete", "league", "olympic"),
    ("politician", "senator", "minister", "elected", "governor"),
    ("ship", "locomotive", "aircraft", "vehicle", "engine"),
    ("building", "tower", "church", "architecture", "castle"),
    ("mountain", "river", "lake", "glacier", "valley"),
    ("village", "parish", "district", "municipality", "rural"),
    ("species", "bird", "insect", "mammal", "beetle"),
    ("plant", "flower", "tree", "shrub", "leaves"),
    ("album", "songs", "tracks", "recorded", "released"),
    ("film", "movie", "directed", "starring", "cinema"),
    ("novel", "book", "author", "published", "magazine"),
)
YAHOO_WORDS = (
    ("religion", "culture", "tradition", "god", "belief"),
    ("physics", "math", "equation", "chemistry", "science"),
    ("doctor", "pain", "medicine", "disease", "health"),
    ("dictionary", "homework", "teacher", "exam", "reference"),
    ("computer", "windows", "internet", "software", "email"),
    ("soccer", "basketball", "team", "game", "coach"),
    ("money", "bank", "tax", "stock", "loan"),
    ("music", "movie", "band", "celebrity", "song"),
    ("boyfriend", "wife", "family", "marriage", "friend"),
    ("president", "government", "election", "war", "law"),
)
FILLER = (
    "the",
    "a",
    "is",
    "of",
    "and",
    "in",
    "it",
    "was",
    "known",
    "also",
    "for",
    "with",
    "which",
    "this",
    "about",
    "many",
    "people",
    "one",
    "first",
    "new",
)


def _sentence(
    rng: np.random.Generator, keywords: Sequence[str], n_key: int, n_fill: int
) -> str:
    words = list(rng.choice(keywords, n_key)) + list(rng.choice(FILLER, n_fill))
    rng.shuffle(words)
    return " ".join(str(w) for w in words)


def _balanced_labels(
    classes: Sequence[int], per_class: int, rng: np.random.Generator
) -> np.ndarray:
    labels = np.repeat(np.asarray(classes, dtype=np.int64), per_class)
    return rng.permutation(labels)


def _write_splits(
    root: Path, subfolder: str, tables: dict[str, datasets.Dataset]
) -> Path:
    folder = root / subfolder if subfolder else root
    folder.mkdir(parents=True, exist_ok=True)
    for split, table in tables.items():
        table.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


def write_dbpedia14(
    root: Path,
    train_per_class: int = 8,
    test_per_class: int = 4,
    classes: Sequence[int] = (0, 1, 2, 3),
    subfolder: str = "dbpedia_14",
    seed: int = 0,
) -> Path:
    """Write a DBpedia-14 mirror; returns ``root`` (the ``data-dir``).

    Rows of class ``c`` have a title and content built from ``c``'s keywords.
    """
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "label": datasets.ClassLabel(names=list(DBPEDIA14_NAMES)),
            "title": datasets.Value("string"),
            "content": datasets.Value("string"),
        }
    )

    def table(per_class: int) -> datasets.Dataset:
        labels = _balanced_labels(classes, per_class, rng)
        words = [DBPEDIA14_WORDS[int(c)] for c in labels]
        return datasets.Dataset.from_dict(
            {
                "label": labels.tolist(),
                "title": [_sentence(rng, w, 1, 1).title() for w in words],
                "content": [_sentence(rng, w, 4, 6) + "." for w in words],
            },
            features=features,
        )

    return _write_splits(
        Path(root),
        subfolder,
        {"train": table(train_per_class), "test": table(test_per_class)},
    )


def write_yahoo_answers(
    root: Path,
    train_per_class: int = 8,
    test_per_class: int = 4,
    classes: Sequence[int] = (0, 1, 2, 3),
    subfolder: str = "yahoo_answers_topics",
    seed: int = 0,
) -> Path:
    """Write a Yahoo Answers Topics mirror; returns ``root`` (the ``data-dir``).

    ``best_answer`` always starts with the marker word ``answer`` so tests can
    tell whether it was included in the text.
    """
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "id": datasets.Value("int32"),
            "topic": datasets.ClassLabel(names=list(YAHOO_NAMES)),
            "question_title": datasets.Value("string"),
            "question_content": datasets.Value("string"),
            "best_answer": datasets.Value("string"),
        }
    )
    next_id = 0

    def table(per_class: int) -> datasets.Dataset:
        nonlocal next_id
        labels = _balanced_labels(classes, per_class, rng)
        words = [YAHOO_WORDS[int(c)] for c in labels]
        ids = list(range(next_id, next_id + len(labels)))
        next_id += len(labels)
        return datasets.Dataset.from_dict(
            {
                "id": ids,
                "topic": labels.tolist(),
                "question_title": [_sentence(rng, w, 2, 2) + "?" for w in words],
                # Some Hub rows have an empty question_content.
                "question_content": [
                    "" if i % 5 == 0 else _sentence(rng, w, 2, 4)
                    for i, w in enumerate(words)
                ],
                "best_answer": ["answer " + _sentence(rng, w, 2, 4) for w in words],
            },
            features=features,
        )

    return _write_splits(
        Path(root),
        subfolder,
        {"train": table(train_per_class), "test": table(test_per_class)},
    )


def class_images(
    labels: np.ndarray,
    size: int,
    channels: int,
    num_classes: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Learnable uint8 images: class-specific colour and stripe pattern plus noise.

    Returns
    -------
    np.ndarray
        uint8 (N, size, size) when ``channels == 1`` else (N, size, size, 3).
    """
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), dtype=np.float32)
    for i, c in enumerate(labels):
        hue = c / max(num_classes, 1)
        colour = np.array([hue, 1.0 - hue, (c % 3) / 2.0], dtype=np.float32) * 200.0
        stripes = ((xx * (1 + c % 4) + yy * (c // 4)) // 4) % 2  # (size, size)
        out[i] = colour[None, None, :] * (0.5 + 0.5 * stripes[..., None])
    out += rng.normal(0.0, 12.0, out.shape).astype(np.float32)
    images = np.clip(out, 0, 255).astype(np.uint8)
    if channels == 1:
        images = images.mean(axis=-1).astype(np.uint8)
    return images


def write_cifar10(
    root: Path,
    train_per_class: int = 6,
    test_per_class: int = 2,
    classes: Sequence[int] = tuple(range(10)),
    subfolder: str = "plain_text",
    seed: int = 0,
) -> Path:
    """Write a CIFAR-10 mirror (32x32 RGB PNGs); returns ``root`` (the ``data-dir``)."""
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "label": datasets.ClassLabel(names=list(CIFAR10_NAMES)),
        }
    )

    def table(per_class: int) -> datasets.Dataset:
        labels = _balanced_labels(classes, per_class, rng)
        images = class_images(labels, 32, 3, 10, rng)
        pngs = []
        for img in images:
            buffer = io.BytesIO()
            Image.fromarray(img).save(buffer, format="PNG")
            pngs.append({"bytes": buffer.getvalue(), "path": None})
        return datasets.Dataset.from_dict(
            {"img": pngs, "label": labels.tolist()}, features=features
        )

    return _write_splits(
        Path(root),
        subfolder,
        {"train": table(train_per_class), "test": table(test_per_class)},
    )


def write_medmnist_npz(
    root: Path,
    flag: str,
    train_per_class: int = 6,
    val_per_class: int = 1,
    test_per_class: int = 2,
    size: int = 28,
    seed: int = 0,
) -> Path:
    """Write ``<flag>.npz`` (or ``<flag>_<size>.npz``) in medmnist's format.

    Channels and number of classes come from ``medmnist.INFO[flag]``.

    Returns
    -------
    Path
        The written npz file (its folder is the ``data-dir``).
    """
    import medmnist

    info = medmnist.INFO[flag]
    num_classes = len(info["label"])
    channels = int(info["n_channels"])
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (
        ("train", train_per_class),
        ("val", val_per_class),
        ("test", test_per_class),
    ):
        labels = _balanced_labels(range(num_classes), per_class, rng)
        arrays[f"{split}_images"] = class_images(
            labels, size, channels, num_classes, rng
        )
        arrays[f"{split}_labels"] = labels.astype(np.uint8).reshape(-1, 1)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


def run_simulation(
    run_config: dict, out_dir: Path, num_supernodes: int = 2, timeout: float = 420.0
) -> tuple[int, str]:
    """Run the app once through Flower's simulation engine on a private SuperLink.

    Returns
    -------
    tuple of (int, str)
        The ``flwr run`` exit code and the run's combined log text.
    """
    from tooling.flower_local import LocalSuperLink

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir.parent / f"{out_dir.name}-flwr.log"
    config = {"output-dir": str(out_dir), "plots": False, "device": "cpu", **run_config}
    with open(log_path, "w", encoding="utf-8") as log, LocalSuperLink() as link:
        rc = link.run_app(
            config, num_supernodes=num_supernodes, stdout=log, timeout=timeout
        )
    return rc, log_path.read_text(encoding="utf-8", errors="replace")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (all values as strings)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
