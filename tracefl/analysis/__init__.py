"""What the server does after each round: evaluate, trace, score, record."""

from tracefl.analysis.pipeline import RoundAnalyzer, build_analyzer, default_steps
from tracefl.analysis.recorder import (
    INPUT_COLUMNS,
    ROUND_COLUMNS,
    TIMING_COLUMNS,
    VOLATILE_COLUMNS,
    Recorder,
)

__all__ = [
    "INPUT_COLUMNS",
    "ROUND_COLUMNS",
    "TIMING_COLUMNS",
    "VOLATILE_COLUMNS",
    "Recorder",
    "RoundAnalyzer",
    "build_analyzer",
    "default_steps",
]
