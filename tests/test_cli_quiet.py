"""Quiet logs at the source: transformers' per-load chatter, not its real warnings."""

from __future__ import annotations

import logging
import warnings

import pytest
from torch import nn
from transformers.utils import logging as hf_logging

from tracefl.text import build_text_model, quiet_loading, warn_unexpected_weights


def test_minilm_loads_without_load_report(capfd, caplog) -> None:
    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    with caplog.at_level(logging.INFO), warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may be raised either
        model = build_text_model("minilm", 4)
    out, err = capfd.readouterr()
    assert "LOAD REPORT" not in out + err + caplog.text
    assert "Loading weights" not in err
    assert model.config.num_labels == 4
    # transformers' own settings are back as they were.
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_quiet_loading_restores_settings_after_an_error() -> None:
    before = hf_logging.get_verbosity()
    with pytest.raises(RuntimeError), quiet_loading():
        assert hf_logging.get_verbosity() == hf_logging.ERROR
        raise RuntimeError("load failed")
    assert hf_logging.get_verbosity() == before


class FakeBert(nn.Module):
    base_model_prefix = "bert"


def test_missing_pretrained_weights_still_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # A fresh head is expected: no warning.
        warn_unexpected_weights(
            FakeBert(), {"missing_keys": {"classifier.weight"}}, "minilm"
        )
    with pytest.warns(UserWarning, match=r"'org/x': 1 pretrained weight\(s\) missing"):
        warn_unexpected_weights(
            FakeBert(),
            {"missing_keys": {"classifier.weight", "bert.pooler.dense.weight"}},
            "org/x",
        )
    with pytest.warns(UserWarning, match="1 with a different shape"):
        warn_unexpected_weights(
            FakeBert(), {"missing_keys": set(), "mismatched_keys": {"bert.x"}}, "org/y"
        )
