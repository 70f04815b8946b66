"""What the server does after each round: evaluate, trace, score, record."""

from tracefl.analysis.pipeline import DEFAULT_STEPS, RoundAnalyzer
from tracefl.analysis.recorder import (
    INPUT_COLUMNS,
    ROUND_COLUMNS,
    TIMING_COLUMNS,
    VOLATILE_COLUMNS,
    Recorder,
)

__all__ = [
    "DEFAULT_STEPS",
    "INPUT_COLUMNS",
    "ROUND_COLUMNS",
    "TIMING_COLUMNS",
    "VOLATILE_COLUMNS",
    "Recorder",
    "RoundAnalyzer",
]
