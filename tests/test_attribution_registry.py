"""The method registry: names, per-round construction, state checks."""

from __future__ import annotations

import pytest

from tracefl.attribution import (
    METHODS,
    ROUND_METHODS,
    AttributionError,
    LeaveOneOut,
    PaperMethod,
    UpdateMethod,
    check_methods,
    create_round_method,
    method_spec,
)


def test_registry_lists_every_method_once_with_its_state() -> None:
    assert list(METHODS) == [
        "paper",
        "update",
        "loo",
        "cross-round",
        "cross-round-unweighted",
        "cumulative",
    ]
    states = {name: spec.state for name, spec in METHODS.items()}
    assert states == {
        "paper": None,
        "update": None,
        "loo": None,
        "cross-round": "online",
        "cross-round-unweighted": "online",
        "cumulative": "store",
    }
    assert set(ROUND_METHODS) == {n for n, s in states.items() if s is None}
    for name, cls in ROUND_METHODS.items():
        assert cls.name == name


def test_create_round_method_passes_options() -> None:
    paper = create_round_method("paper", scale_by_data_share=False)
    assert isinstance(paper, PaperMethod) and not paper.scale_by_data_share
    update = create_round_method("update", objective="margin")
    assert isinstance(update, UpdateMethod) and update.options.objective == "margin"
    assert isinstance(create_round_method("loo"), LeaveOneOut)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: method_spec("trace"), r"unknown attribution method 'trace'; known"),
        (lambda: create_round_method("Paper"), "unknown attribution method 'Paper'"),
        (
            lambda: create_round_method("cumulative"),
            "'cumulative' is not a per-round method: it needs a CumulativeUpdates",
        ),
        (
            lambda: create_round_method("cross-round"),
            "needs a CrossRoundOnline",
        ),
        (
            lambda: create_round_method("paper", objective="margin"),
            r"'paper' has no option 'objective'; its options are \['scale_by",
        ),
        (
            lambda: check_methods(
                ["paper", "cumulative"], keeps_online=True, keeps_store=False
            ),
            "method 'cumulative' needs a CumulativeUpdates kept across rounds",
        ),
        (
            lambda: check_methods(
                ["cross-round-unweighted"], keeps_online=False, keeps_store=True
            ),
            "'cross-round-unweighted' needs a CrossRoundOnline",
        ),
        (
            lambda: check_methods(
                ["loo", "loo"], keeps_online=False, keeps_store=False
            ),
            "'loo' is listed twice",
        ),
        (
            lambda: check_methods("paper", keeps_online=False, keeps_store=False),
            "sequence of names, got the string 'paper'",
        ),
    ],
)
def test_bad_names_and_missing_state_are_named(call, message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        call()


def test_check_methods_returns_specs_in_order() -> None:
    specs = check_methods(
        ["cumulative", "paper", "cross-round"], keeps_online=True, keeps_store=True
    )
    assert [s.name for s in specs] == ["cumulative", "paper", "cross-round"]
    assert check_methods([], keeps_online=False, keeps_store=False) == ()
