"""The one error type of the attribution methods."""

from __future__ import annotations


class AttributionError(ValueError):
    """Bad method name or option, missing state, or a round/store/model mismatch.

    The message names the culprit (method, option, client, key) and what is
    allowed, so that a run can be rejected before it trains.
    """
