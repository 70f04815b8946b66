"""Whether the Hugging Face Hub can be used from this process.

One check shared by the dataset sources and the text-model loaders, so that
offline runs fail at once with a clear message instead of timing out.
"""

from __future__ import annotations

import os
import socket

HUB_HOST = "huggingface.co"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub can be used: not forced offline and its host answers."""
    for name in _OFFLINE_VARIABLES:
        if os.environ.get(name, "0").lower() in ("1", "true", "yes"):
            return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False
