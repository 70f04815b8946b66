"""What a run records about its software: the versions behind its numbers."""

from __future__ import annotations

import platform
from importlib import metadata

#: Packages whose versions determine a run's numbers.
VERSIONED_PACKAGES = (
    "tracefl",
    "flwr",
    "flwr-datasets",
    "torch",
    "torchvision",
    "transformers",
    "datasets",
    "numpy",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
