"""Adversarial clients for validating attribution (Flower-free).

* :mod:`~tracefl.adversarial.trigger`: backdoor triggers (an image patch, a
  text token) and poisoning of a client's own samples;
* :mod:`~tracefl.adversarial.gaming`: transforms a client applies to its
  trained model to game score-based attribution.

The ClientApp and the analysis only call into these; nothing here knows Flower.
"""

from .gaming import GamingPlan, game_update, output_layer_keys
from .trigger import (
    ImageTrigger,
    TokenTrigger,
    Trigger,
    backdoor_label_map,
    poison_samples,
)

__all__ = [
    "GamingPlan",
    "ImageTrigger",
    "TokenTrigger",
    "Trigger",
    "backdoor_label_map",
    "game_update",
    "output_layer_keys",
    "poison_samples",
]
