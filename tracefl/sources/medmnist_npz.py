"""MedMNIST datasets (PathMNIST, OrganAMNIST) from medmnist's npz files.

medmnist stores each dataset and image size in one npz file, ``<flag>.npz`` for
28x28 images and ``<flag>_<size>.npz`` for 64, 128 and 224, with keys
``{train,val,test}_images`` (uint8, (N, H, W) grayscale or (N, H, W, 3) RGB) and
``{train,val,test}_labels`` (uint8/int, (N, 1)). The file is read directly with
numpy (medmnist's ``Dataset`` classes assert the official split sizes, which
small test fixtures do not have); medmnist's own downloader is used only when
``download=true``.

The client pool is the **train** split and the server's held-out split is the
**test** split; the ``val`` split is not used (it is medmnist's model-selection
split, and the per-client cap ``max-per-client-data-size`` makes the extra
samples unnecessary).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import datasets.table
import numpy as np
import pyarrow as pa
from datasets.features.features import Array2DExtensionType, Array3DExtensionType

from tracefl.config import MEDMNIST_SIZES
from tracefl.registry import DatasetSpec
from tracefl.sources.raw import DataUnavailableError, RawSplits

NPZ_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


class MedMNISTUnavailableError(DataUnavailableError):
    """The medmnist npz file is missing or malformed; the message says how to fix."""


def npz_filename(flag: str, image_size: int) -> str:
    """Return medmnist's npz name: ``pathmnist.npz`` (28 px), ``pathmnist_64.npz``."""
    return f"{flag}.npz" if image_size == 28 else f"{flag}_{image_size}.npz"


def default_root() -> Path:
    """Return medmnist's default data folder (``~/.medmnist``), without creating it."""
    return Path("~/.medmnist").expanduser()


def npz_path(flag: str, data_dir: str, image_size: int) -> Path:
    """Where the npz file of ``flag`` at ``image_size`` is expected."""
    root = Path(data_dir).expanduser() if data_dir else default_root()
    return root / npz_filename(flag, image_size)


def check_medmnist(
    spec: DatasetSpec, data_dir: str, image_size: int, download: bool
) -> str:
    """Fail at once if the npz file is missing (and not to be downloaded).

    Returns what will be read, for the log. Only the file's index is read.
    """
    path = npz_path(spec.hub_id, data_dir, image_size)
    if not path.is_file():
        if download:
            return f"{path} (to be downloaded by medmnist)"
        raise MedMNISTUnavailableError(_missing_message(spec, path, data_dir))
    try:
        with np.load(path) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
    except (OSError, ValueError) as err:
        raise MedMNISTUnavailableError(
            f"{path} could not be read as an npz file ({err})."
        ) from err
    if missing:
        raise MedMNISTUnavailableError(
            f"{path} is not a medmnist npz file: it lacks {missing}."
        )
    return str(path)


def _missing_message(spec: DatasetSpec, path: Path, data_dir: str) -> str:
    where = (
        f"data-dir '{data_dir}'"
        if data_dir
        else f"medmnist's default folder {default_root()} (data-dir is empty)"
    )
    return (
        f"Dataset '{spec.name}' needs medmnist's file {path.name}, which is not in "
        f"{where}. Either set run-config download=true (needs internet; medmnist "
        f"downloads it from Zenodo into that folder), or place the file at the "
        f"exact path {path} (e.g. copy it from a machine where "
        f"`python -m medmnist download` or download=true was run)."
    )


def _download(spec: DatasetSpec, path: Path, image_size: int) -> None:
    """Fetch the npz with medmnist's own downloader (needs internet)."""
    import medmnist

    path.parent.mkdir(parents=True, exist_ok=True)
    dataset_cls = getattr(medmnist, medmnist.INFO[spec.hub_id]["python_class"])
    try:
        dataset_cls(split="test", root=str(path.parent), size=image_size, download=True)
    except Exception as err:  # medmnist wraps every failure in a bare RuntimeError
        raise MedMNISTUnavailableError(
            f"Downloading {path.name} for dataset '{spec.name}' failed ({err}). "
            f"Place the file at {path} by hand and run with download=false."
        ) from err


def images_table(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """Build an in-memory ``datasets.Dataset`` with ``image`` and ``label`` columns.

    ``image`` is an ``Array2D``/``Array3D`` feature built directly on the image
    buffer (no per-pixel Python objects): PathMNIST's 90k RGB images load in a
    few seconds, and ``with_format("numpy")`` (used by
    :func:`tracefl.dataset.to_tensors`) converts it without a Python-object
    detour - about 20x faster than plain nested lists.

    Parameters
    ----------
    images
        uint8 (N, H, W) or (N, H, W, C).
    labels
        int (N,).

    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    shape = tuple(int(d) for d in images.shape[1:])
    array_type = Array3DExtensionType if len(shape) == 3 else Array2DExtensionType
    ext_type = array_type(shape=shape, dtype="uint8")
    # datasets stores ArrayXD as variable-size lists with int32 offsets: build
    # chunks of < 2**31 values each.
    rows_per_chunk = max(1, (2**31 - 1) // max(int(np.prod(shape)), 1))
    chunks = []
    for start in range(0, max(len(images), 1), rows_per_chunk):
        storage: pa.Array = pa.array(images[start : start + rows_per_chunk].reshape(-1))
        for dim in reversed(shape):
            offsets = np.arange(0, len(storage) + 1, dim, dtype=np.int32)
            storage = pa.ListArray.from_arrays(pa.array(offsets), storage)
        chunks.append(pa.ExtensionArray.from_storage(ext_type, storage))
    table = pa.table(
        {
            "image": pa.chunked_array(chunks, type=ext_type),
            "label": pa.array(np.asarray(labels, dtype=np.int64)),
        }
    )
    return datasets.Dataset(datasets.table.InMemoryTable(table))


def _check_split(
    spec: DatasetSpec, path: Path, split: str, images: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Validate one split and return its labels flattened to int64 (N,)."""
    ok_shape = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
    if not ok_shape or images.dtype != np.uint8:
        raise MedMNISTUnavailableError(
            f"{path}: '{split}_images' must be uint8 (N, H, W) or (N, H, W, 3), got "
            f"{images.dtype} {images.shape}."
        )
    flat = np.asarray(labels).reshape(len(labels), -1)
    if flat.shape[1] != 1 or len(flat) != len(images):
        raise MedMNISTUnavailableError(
            f"{path}: '{split}_labels' must have shape ({len(images)}, 1) for "
            f"single-label '{spec.name}', got {np.asarray(labels).shape}."
        )
    flat = flat[:, 0].astype(np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= spec.num_classes):
        raise MedMNISTUnavailableError(
            f"{path}: '{split}_labels' must be in 0..{spec.num_classes - 1}, got "
            f"{flat.min()}..{flat.max()}."
        )
    return flat


def load_medmnist(
    spec: DatasetSpec, data_dir: str, image_size: int, download: bool
) -> RawSplits:
    """Load a medmnist dataset's train (client pool) and test (server) splits.

    Parameters
    ----------
    spec
        Dataset spec; ``spec.hub_id`` is the medmnist flag (``pathmnist``).
    data_dir
        Folder holding the npz file; empty means medmnist's ``~/.medmnist``.
    image_size
        28, 64, 128 or 224 (run-config ``image-size``); picks the npz file.
    download
        Fetch a missing file with medmnist's downloader (needs internet).

    Returns
    -------
    RawSplits
        ``image`` uint8 (H, W) or (H, W, 3) per row, ``label`` int64.

    Raises
    ------
    MedMNISTUnavailableError
        (a :class:`DataUnavailableError`) unsupported size, missing file with
        ``download=false`` (raised at once, naming the exact expected path), or
        a file that is not in medmnist's format.

    """
    if image_size not in MEDMNIST_SIZES:
        raise MedMNISTUnavailableError(
            f"Invalid 'image-size' = {image_size} for medmnist dataset "
            f"'{spec.name}': allowed values are "
            f"{', '.join(map(str, MEDMNIST_SIZES))}."
        )
    path = npz_path(spec.hub_id, data_dir, image_size)
    if not path.is_file():
        if not download:
            raise MedMNISTUnavailableError(_missing_message(spec, path, data_dir))
        _download(spec, path, image_size)
    try:
        with np.load(path) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise MedMNISTUnavailableError(
                    f"{path} is not a medmnist npz file: it lacks {missing} "
                    f"(has {sorted(npz.files)})."
                )
            arrays = {key: npz[key] for key in NPZ_KEYS}
    except (OSError, ValueError) as err:
        raise MedMNISTUnavailableError(
            f"{path} could not be read as an npz file ({err})."
        ) from err
    splits = {}
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        labels = _check_split(spec, path, split, images, arrays[f"{split}_labels"])
        if images.shape[1] != image_size or images.shape[2] != image_size:
            raise MedMNISTUnavailableError(
                f"{path}: images are {images.shape[1]}x{images.shape[2]} but "
                f"image-size = {image_size}."
            )
        splits[split] = images_table(images, labels)
    return RawSplits(train=splits["train"], test=splits["test"])
