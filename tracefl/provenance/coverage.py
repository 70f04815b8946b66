"""Which global parameters the traced layers cover, and why the others are not.

Set-up maps every parameter of the global model (each tensor once, tied weights
included) to the traced layers that hold it, or to the reason none does; each
``attribute`` call then turns the layers that ran and the signals
``<theta, dY/d theta>`` into a :class:`~tracefl.provenance.result.CoverageReport`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from .clients import raw_keys
from .layers.base import LayerSpec, LayerTracer
from .result import CoverageReport, TracedLayer, UntracedParameter

#: Module families that hold parameters but are not linear in them, and why.
NOT_LINEAR: tuple[tuple[type[nn.Module], str], ...] = (
    (
        nn.RNNBase,
        "recurrent layer: its output is not linear in its parameters (only each "
        "step's gate pre-activations are); not traced",
    ),
    (
        nn.RNNCellBase,
        "recurrent cell: its output is not linear in its parameters; not traced",
    ),
    (
        nn.PReLU,
        "affine, not linear, in its slope (the positive part does not depend on it)",
    ),
)


class ProvenanceCoverageWarning(UserWarning):
    """More of the signal than the threshold is in untraced parameters."""


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor of the global model and what covers it."""

    name: str
    tensor: Tensor
    module_type: str
    layers: tuple[str, ...]
    reason: str


def plan_coverage(
    model: nn.Module,
    traced: Mapping[str, tuple[LayerTracer, tuple[LayerSpec, ...]]],
    untraceable: Mapping[str, str],
    layer_set: str,
    every_tracer: Sequence[LayerTracer],
) -> list[ParamInfo]:
    """Map each parameter tensor to the layers covering it or to a reason."""
    by_key = dict(model.named_parameters(remove_duplicate=False))
    covering: dict[int, list[str]] = {}
    for _, specs in traced.values():
        for spec in specs:
            for key in spec.params:
                for raw in raw_keys(model, key):
                    if raw in by_key:
                        covering.setdefault(id(by_key[raw]), []).append(spec.name)
    modules = dict(model.named_modules())
    infos = []
    for name, tensor in model.named_parameters():
        owner_name = _owner(name)
        owner = modules[owner_name]
        layers = tuple(dict.fromkeys(covering.get(id(tensor), ())))
        reason = (
            ""
            if layers
            else _reason(
                owner, owner_name, name, traced, untraceable, layer_set, every_tracer
            )
        )
        infos.append(ParamInfo(name, tensor, type(owner).__name__, layers, reason))
    return infos


def _owner(param_name: str) -> str:
    """Name of the module a parameter belongs to (through parametrisations)."""
    if ".parametrizations." in f".{param_name}":
        return f".{param_name}".split(".parametrizations.")[0][1:]
    return param_name.rpartition(".")[0]


def _reason(
    owner: nn.Module,
    owner_name: str,
    name: str,
    traced: Mapping[str, tuple[LayerTracer, tuple[LayerSpec, ...]]],
    untraceable: Mapping[str, str],
    layer_set: str,
    every_tracer: Sequence[LayerTracer],
) -> str:
    kind = type(owner).__name__
    if owner_name in untraceable:
        return untraceable[owner_name]
    if owner_name in traced:
        return f"not part of the layers the {traced[owner_name][0].name} tracer traces"
    for family, why in NOT_LINEAR:
        if isinstance(owner, family):
            return why
    if any(t.matches(owner) for t in every_tracer):
        return f"{kind} is not in the {layer_set!r} layer set"
    return (
        f"no tracer for {kind}: the parameter is used directly in its forward "
        "(pass layers= with a tracer that knows it)"
    )


def coverage_report(
    infos: Sequence[ParamInfo],
    ran: Mapping[str, tuple[str, str, tuple[str, ...], int, float]],
    untraced_signal: Mapping[str, float],
    layer_set: str,
    threshold: float,
) -> CoverageReport:
    """Build the report of one ``attribute`` call and warn above ``threshold``.

    Parameters
    ----------
    infos
        From :func:`plan_coverage`.
    ran
        Per traced layer that ran (forward order): module type, tracer name,
        parameter names, number of parameter elements and signed signal
        ``sum_b t_{l, global}[b]``.
    untraced_signal
        Signed ``<theta, dY/d theta>`` per untraced parameter name.
    layer_set, threshold
        Reported as is.

    """
    untraced = [i for i in infos if not any(layer in ran for layer in i.layers)]
    signals = [abs(v[4]) for v in ran.values()]
    signals += [abs(untraced_signal.get(i.name, 0.0)) for i in untraced]
    total = sum(signals)

    def share(value: float) -> float:
        return abs(value) / total if total > 0 else 0.0

    traced_layers = tuple(
        TracedLayer(name, kind, tracer, params, n, share(signal))
        for name, (kind, tracer, params, n, signal) in ran.items()
    )
    rows = tuple(
        UntracedParameter(
            i.name,
            i.module_type,
            i.reason or "its layer did not run in the forward pass",
            i.tensor.numel(),
            share(untraced_signal.get(i.name, 0.0)),
        )
        for i in untraced
    )
    by_type: dict[str, float] = {}
    for row in rows:
        by_type[row.module_type] = by_type.get(row.module_type, 0.0) + row.share
    untraced_share = sum(r.share for r in rows)
    report = CoverageReport(
        layer_set, traced_layers, rows, untraced_share, by_type, threshold
    )
    if untraced_share > threshold:
        worst = sorted(by_type.items(), key=lambda kv: -kv[1])[:3]
        listed = ", ".join(f"{kind} {value:.1%}" for kind, value in worst)
        warnings.warn(
            f"{untraced_share:.1%} of |<theta, dy/dtheta>| is in untraced parameters "
            f"({listed}); see result.coverage.untraced for the reasons",
            ProvenanceCoverageWarning,
            stacklevel=4,
        )
    return report
