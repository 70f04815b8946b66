"""MedMNIST datasets (PathMNIST, OrganAMNIST) from medmnist's npz files."""

from __future__ import annotations

from tracefl.dataset import RawSplits
from tracefl.registry import DatasetSpec


def load_medmnist(
    spec: DatasetSpec, data_dir: str, image_size: int, download: bool
) -> RawSplits:
    """Load a medmnist dataset (implemented in the medical-imaging issue)."""
    raise NotImplementedError(f"Dataset '{spec.name}' is not available yet.")
