"""Aggregators: one Flower strategy per ``fusion`` and its provenance shares.

Each module holds one aggregator (an :class:`~tracefl.aggregators.base.Aggregator`
subclass); :data:`AGGREGATORS` is the explicit registry: a new aggregator is one
new module plus one line in ``_ALL`` (and its name in ``tracefl.config.FUSIONS``,
its hyper-parameters in the config's aggregators block).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from tracefl.aggregators.base import Aggregator, Decomposition, sampling_arguments
from tracefl.aggregators.bulyan import BulyanAggregator
from tracefl.aggregators.fedadagrad import FedAdagradAggregator
from tracefl.aggregators.fedadam import FedAdamAggregator
from tracefl.aggregators.fedavg import FedAvgAggregator
from tracefl.aggregators.fedavgm import FedAvgMAggregator
from tracefl.aggregators.fedmedian import FedMedianAggregator
from tracefl.aggregators.fedprox import FedProxAggregator
from tracefl.aggregators.fedtrimmedavg import FedTrimmedAvgAggregator
from tracefl.aggregators.fedyogi import FedYogiAggregator
from tracefl.aggregators.krum import KrumAggregator
from tracefl.aggregators.multikrum import MultiKrumAggregator

_ALL: tuple[type[Aggregator], ...] = (
    FedAvgAggregator,
    FedProxAggregator,
    FedAvgMAggregator,
    FedAdamAggregator,
    FedYogiAggregator,
    FedAdagradAggregator,
    FedMedianAggregator,
    FedTrimmedAvgAggregator,
    KrumAggregator,
    MultiKrumAggregator,
    BulyanAggregator,
)

AGGREGATORS: Mapping[str, type[Aggregator]] = MappingProxyType(
    {cls.name: cls for cls in _ALL}
)
"""``fusion`` name -> aggregator class, in the order of ``tracefl.config.FUSIONS``."""


def get_aggregator(fusion: str) -> Aggregator:
    """The aggregator for a ``fusion`` name.

    Raises
    ------
    KeyError
        Unknown name; the message lists the known ones.
    """
    try:
        return AGGREGATORS[fusion]()
    except KeyError:
        known = ", ".join(AGGREGATORS)
        raise KeyError(f"Unknown fusion '{fusion}'; known: {known}") from None


__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "Decomposition",
    "get_aggregator",
    "sampling_arguments",
]
