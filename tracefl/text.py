"""Text models and tokenisation (implemented in the transformers issue)."""

from __future__ import annotations

from torch import Tensor, nn


def build_text_model(name: str, num_classes: int, max_seq_len: int = 128) -> nn.Module:
    """Build a sequence classifier (not available yet)."""
    raise NotImplementedError(f"Text model '{name}' is not available yet.")


def encode_texts(texts: list[str], model_name: str, max_seq_len: int) -> dict[str, Tensor]:
    """Tokenise texts (not available yet)."""
    raise NotImplementedError(f"Tokeniser of '{model_name}' is not available yet.")
