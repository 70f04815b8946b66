"""TraceFL neuron provenance (ICSE'25, Section IV, Algorithm 1), vectorised.

For an input ``x`` the global model gives logits ``z``; ``y`` is the objective
of the target class ``t`` (by default the predicted class and the raw logit
``z[t]``, the paper's definition; see :mod:`tracefl.provenance.objective`). For
every traced layer ``l`` (the layer families of ``layers=``: by default every
layer whose output is linear in its parameters; see
:mod:`tracefl.provenance.layers`), with ``z_l`` the global model's input to the
layer and ``c_l = dy/d(layer output)``, client ``k`` contributes ::

    t_{l,k} = sum_j c_l[j] * layer_l(z_l; theta_{l,k})[j]        (Eq. 5)

(``j`` runs over every output element: channel x position, token x feature), a
layer used several times in a forward pass summing its uses. ``T_k = sum_l beta_l
* p_k^s * t_{l,k}`` with ``beta_l = decay**(L-1-l)`` over the ``L`` layers in
order of first use (``1`` when ``enable_beta=False``) and ``p_k = n_k / sum(n)``
when ``scale_by_data_share`` (``s = 1``, otherwise ``s = 0``). Since each layer
output is linear in its parameters, scaling the parameters by ``p_k`` (as in the
paper) equals scaling ``t_{l,k}`` by ``p_k``, which is what we do. ``probs =
softmax(T)`` (Eq. 7) and the traced client is ``argmax(T)``.

How it is computed (same math, different evaluation order):

1. One batched forward + one ``torch.autograd.grad`` of ``sum_b y_b`` in eval
   mode gives every input's ``c_l`` at once (inputs are independent in eval
   mode). Gradients are taken w.r.t. the *gradient edge* of each layer output as
   recorded when the layer ran, so a later in-place op (``ReLU(inplace=True)``)
   does not change ``c_l``. No ``.grad`` of the user's model is touched.
2. Each layer tensor's batch layout is found (once per input shape) from a probe
   pass on one input (:mod:`tracefl.provenance.layout`); outputs shared by all
   inputs get per-input gradients at their consumers
   (:mod:`tracefl.provenance.shared`).
3. Per layer use, ``t_{l,k}`` for all inputs and a chunk of clients is one
   batched product with the clients' parameters, gathered chunk by chunk from
   the clients' own tensors (:mod:`tracefl.provenance.clients`).
4. The batch is processed in chunks of ``chunk_size`` inputs to bound memory;
   large temporaries live in buffers reused across layers and calls, so one
   engine must not be used from several threads at once.

A coverage report (:class:`~tracefl.provenance.result.CoverageReport`) says
which parameters were not traced and how much of ``|<theta, dy/dtheta>|`` they
hold.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from .call import ModuleCall
from .clients import ClientParams, raw_keys
from .coverage import coverage_report, plan_coverage
from .layers import LAYER_SETS, TRACERS, LayerSpec, LayerTracer, Workspace, find_tracer
from .layers.base import UntraceableError, nbytes
from .objective import check_objective, objective_values
from .planning import Consumers, LayoutPlan, probe_layouts
from .recording import inputs_to, logits_of, record_calls, signature, slice_inputs
from .result import ProvenanceResult
from .shared import batched_edges, per_input_grads
from .validation import (
    Inputs,
    ProvenanceInputError,
    Target,
    batch_size_of,
    check_finite_state,
    check_input_dtype,
    check_target,
    client_state,
    resolve_targets,
    validate_client_ids,
    validate_client_weights,
)


@dataclass(frozen=True)
class _Traced:
    """A traced module: its tracer and its layers."""

    module: nn.Module
    tracer: LayerTracer
    layers: tuple[LayerSpec, ...]


@dataclass
class _Chunk:
    """What one chunk of inputs contributes to the result."""

    contrib: Tensor  # (B, L, K + 1) float64, unweighted t_{l,k}; column K: global
    names: tuple[str, ...]
    predicted: Tensor
    targets: Tensor
    peak: int
    untraced_signal: dict[str, float] = field(default_factory=dict)


class NeuronProvenance:
    """Attribute global-model predictions to the clients of one FL round.

    Parameters
    ----------
    global_model
        The aggregated model. It is put in eval mode during :meth:`attribute`
        (its training flag and ``requires_grad`` flags are restored afterwards).
    client_models
        ``K >= 1`` parameter sets of the global model's shapes: client models of
        its class, or state dicts. A set may be anything with those shapes, e.g.
        an update ``theta_k - theta_{t-1}``, a share-weighted ``A_k * theta_k``
        or a residual; it must hold every traced parameter (raw tensors of
        parametrised weights), finite; other parameters and buffers may be
        omitted: normalisation statistics always come from the global model.
        The engine keeps references to these tensors (no copy unless the device
        or dtype differs): do not modify them while the engine is in use.
    client_weights
        ``K`` positive finite numbers of training samples ``n_k`` (always
        required; used when ``scale_by_data_share``).
    client_ids
        ``K`` unique names; defaults to ``"0", ..., "K-1"``.
    decay
        Layer importance decay: ``beta_l = decay ** (L - 1 - l)``.
    enable_beta
        If False, ``beta_l = 1`` for every layer.
    scale_by_data_share
        Multiply client ``k``'s contribution by ``p_k = n_k / sum(n)`` (run-config
        ``client-weights-normalization``).
    objective
        What ``y`` is, see :mod:`tracefl.provenance.objective`: ``"logit"`` (the
        paper), ``"log_softmax"`` or ``"margin"``.
    layers
        Traced layer families: ``"all"`` (every family the engine knows, the
        default), ``"paper"`` (the original artifact's Linear, Conv2d, LayerNorm
        and GPT-2 Conv1D, with plain weights) or a tuple of
        :class:`~tracefl.provenance.layers.LayerTracer` (``"custom"``).
    device
        Where to compute. Defaults to the global model's device. If it differs,
        a private copy of the global model is moved there (the user's module is
        never moved).
    chunk_size
        Number of inputs per forward/backward chunk (bounds peak memory).
    client_chunk_size
        Number of parameter sets gathered at once per layer (``None``: all
        ``K`` plus the global model). Bounds the gathered buffer to this many
        times the largest layer.
    untraced_warning_threshold
        Warn (:class:`~tracefl.provenance.ProvenanceCoverageWarning`) when more
        than this share of the signal is in untraced parameters.

    """

    def __init__(
        self,
        global_model: nn.Module,
        client_models: Sequence[nn.Module | Mapping[str, Tensor]],
        client_weights: Sequence[float],
        client_ids: Sequence[str] | None = None,
        *,
        decay: float = 0.9,
        enable_beta: bool = True,
        scale_by_data_share: bool = False,
        objective: str = "logit",
        layers: str | tuple[LayerTracer, ...] = "all",
        device: str | torch.device | None = None,
        chunk_size: int = 32,
        client_chunk_size: int | None = None,
        untraced_warning_threshold: float = 0.05,
    ) -> None:
        if not isinstance(global_model, nn.Module):
            raise ProvenanceInputError(
                f"global_model must be an nn.Module, got {type(global_model)!r}"
            )
        if isinstance(client_models, (nn.Module, Mapping)) or not isinstance(
            client_models, Sequence
        ):
            raise ProvenanceInputError(
                "client_models must be a sequence of modules or state dicts"
            )
        if len(client_models) < 1:
            raise ProvenanceInputError("at least one client model is required")
        if not (isinstance(decay, (int, float)) and 0 < float(decay) < float("inf")):
            raise ProvenanceInputError(f"decay must be a positive number, got {decay}")
        self.chunk_size = _positive_int(chunk_size, "chunk_size")
        self.client_chunk_size = (
            None
            if client_chunk_size is None
            else _positive_int(client_chunk_size, "client_chunk_size")
        )
        if not (
            isinstance(untraced_warning_threshold, (int, float))
            and 0 <= float(untraced_warning_threshold) <= 1
        ):
            raise ProvenanceInputError(
                "untraced_warning_threshold must be in [0, 1], got "
                f"{untraced_warning_threshold!r}"
            )
        self.untraced_warning_threshold = float(untraced_warning_threshold)
        self.objective = check_objective(objective)
        self.layer_set, tracers = _layer_set(layers)
        self.client_ids = validate_client_ids(client_ids, len(client_models))
        self.client_weights = validate_client_weights(client_weights, self.client_ids)
        self.decay = float(decay)
        self.enable_beta = bool(enable_beta)
        self.scale_by_data_share = bool(scale_by_data_share)

        params = list(global_model.parameters())
        if not params:
            raise ProvenanceInputError("global model has no parameters")
        model_device = params[0].device
        self.device = torch.device(device) if device is not None else model_device
        self.dtype = params[0].dtype
        if self.device != model_device:
            global_model = copy.deepcopy(global_model).to(self.device)
        self.model = global_model

        global_state = global_model.state_dict()
        check_finite_state(global_state, "global model")
        self._traced, untraceable = _traced_modules(global_model, tracers)
        if not self._traced:
            raise ProvenanceInputError(
                f"global model has no traced layers in the {self.layer_set!r} layer "
                "set (modules with parameters a tracer knows)"
            )
        self._coverage = plan_coverage(
            global_model,
            {n: (t.tracer, t.layers) for n, t in self._traced.items()},
            untraceable,
            self.layer_set,
            TRACERS,
        )
        keys = [k for t in self._traced.values() for s in t.layers for k in s.params]
        keys = list(dict.fromkeys(keys))
        required = {r for k in keys for r in raw_keys(global_model, k)}
        shapes = {n: t.shape for n, t in global_state.items()}
        states = [
            client_state(c, global_model, shapes, required, cid)
            for c, cid in zip(client_models, self.client_ids, strict=True)
        ]
        self._params = ClientParams(
            global_model, states, self.client_ids, keys, self.device, self.dtype
        )
        self._numel = {k: self._params.sets[-1][k].numel() for k in keys}
        self._layer_owner = {s.name: t for t in self._traced.values() for s in t.layers}
        self._layer_params = {
            s.name: tuple(
                dict.fromkeys(r for k in s.params for r in raw_keys(global_model, k))
            )
            for t in self._traced.values()
            for s in t.layers
        }
        n = torch.tensor(self.client_weights, dtype=torch.float64)
        self._data_share = n / n.sum()
        self._workspace = Workspace()
        self._plans: dict[tuple, LayoutPlan] = {}

    # ------------------------------------------------------------------ public
    def attribute(
        self,
        inputs: Inputs,
        *,
        target: Target = None,
        return_per_layer: bool = False,
    ) -> ProvenanceResult:
        """Attribute the global model's prediction on each input to the clients.

        Parameters
        ----------
        inputs
            ``(B, ...)`` tensor passed as ``model(inputs)``, or a mapping of
            ``(B, ...)`` tensors passed as ``model(**inputs)``; the batch is
            dimension 0 of every input (inside the model, layers may use any
            layout).
        target
            The class whose ``y`` is traced: ``None`` (the predicted class), an
            ``int`` (the same class for every input) or a ``(B,)`` integer tensor
            (one class per input, e.g. the true labels). Every class must be in
            ``0..C-1``.
        return_per_layer
            Also return the ``(B, L, K)`` beta-weighted per-layer terms.

        Returns
        -------
        ProvenanceResult
            ``scores``/``probs`` ``(B, K)`` float64, ``traced``,
            ``predicted_labels`` and ``targets`` ``(B,)`` int64, the coverage
            report. ``peak_memory_bytes`` is, on CUDA,
            ``torch.cuda.max_memory_allocated`` over the call; on CPU, an
            estimate of the engine's own allocations: for the largest chunk the
            captured layer inputs and output gradients, plus the reused buffers
            (per-sample gradients, patches, gathered client parameters) and the
            largest other temporary (autograd's saved activations are not
            counted).

        Raises
        ------
        ProvenanceInputError
            For bad inputs or targets, and for any exception raised inside the
            model's forward pass (naming the innermost module running).

        """
        batch = batch_size_of(inputs)
        checked_target = check_target(target, batch)
        check_input_dtype(inputs, self.model, self.dtype)
        inputs = inputs_to(inputs, self.device)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

        model = self.model
        was_training = model.training
        saved_flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            model.eval()
            for p, _ in saved_flags:
                if p.is_floating_point():
                    p.requires_grad_(True)
            chunks = self._attribute(inputs, batch, checked_target)
        finally:
            for p, flag in saved_flags:
                p.requires_grad_(flag)
            model.train(was_training)
        return self._result(chunks, cuda, return_per_layer)

    # ----------------------------------------------------------------- private
    def _result(
        self, chunks: list[_Chunk], cuda: bool, return_per_layer: bool
    ) -> ProvenanceResult:
        contrib = torch.cat([c.contrib for c in chunks])  # (B, L, K + 1)
        names = chunks[0].names
        k = len(self.client_ids)
        per_layer = contrib[..., :k]
        n_layers = per_layer.shape[1]
        if self.enable_beta:
            exponents = torch.arange(n_layers - 1, -1, -1, dtype=torch.float64)
            beta = self.decay**exponents
        else:
            beta = torch.ones(n_layers, dtype=torch.float64)
        weight = beta.to(per_layer.device)[:, None]
        if self.scale_by_data_share:
            weight = weight * self._data_share.to(per_layer.device)[None, :]
        per_layer = per_layer * weight
        scores = per_layer.sum(1)
        if cuda:
            peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            peak = max(c.peak for c in chunks)
        global_signal = contrib[..., k].sum(0).tolist()
        ran = {}
        for name, signal in zip(names, global_signal, strict=True):
            traced = self._layer_owner[name]
            spec = next(s for s in traced.layers if s.name == name)
            ran[name] = (
                type(traced.module).__name__,
                traced.tracer.name,
                self._layer_params[name],
                sum(self._numel[key] for key in spec.params),
                signal,
            )
        untraced: dict[str, float] = {}
        for c in chunks:
            for key, value in c.untraced_signal.items():
                untraced[key] = untraced.get(key, 0.0) + value
        coverage = coverage_report(
            self._coverage,
            ran,
            untraced,
            self.layer_set,
            self.untraced_warning_threshold,
        )
        return ProvenanceResult(
            scores=scores,
            probs=torch.softmax(scores, dim=1),
            traced=scores.argmax(1),
            client_ids=self.client_ids,
            predicted_labels=torch.cat([c.predicted for c in chunks]),
            targets=torch.cat([c.targets for c in chunks]),
            objective=self.objective,
            layer_set=self.layer_set,
            layer_names=names,
            per_layer=per_layer if return_per_layer else None,
            peak_memory_bytes=peak,
            coverage=coverage,
        )

    def _attribute(
        self, inputs: Inputs, batch: int, target: Tensor | int | None
    ) -> list[_Chunk]:
        chunks: list[_Chunk] = []
        for start in range(0, batch, self.chunk_size):
            chunk = slice_inputs(inputs, start, start + self.chunk_size)
            result = self._attribute_chunk(chunk, target, start)
            if chunks and result.names != chunks[0].names:
                raise ProvenanceInputError(
                    "the traced layers differ between chunks of the batch; the "
                    "model's control flow must not depend on the input"
                )
            chunks.append(result)
        return chunks

    def _forward(self, inputs: Inputs) -> tuple[object, list[ModuleCall]]:
        modules = {name: t.module for name, t in self._traced.items()}
        return record_calls(self.model, inputs, modules)

    def _layouts(
        self, inputs: Inputs, calls: list[ModuleCall], logits: Tensor
    ) -> Consumers:
        """Set every call's layouts; return the consumers of shared outputs."""
        key = signature(inputs)
        plan = self._plans.get(key)
        consumers = None
        if plan is not None and plan.fits(calls, logits.shape[0]):
            consumers = plan.consumers_in(calls, logits.grad_fn)
        if plan is None or consumers is None:
            tracers = {name: t.tracer for name, t in self._traced.items()}
            plan, consumers = probe_layouts(
                self._forward, inputs, calls, logits, tracers
            )
            self._plans[key] = plan
        for call, layouts in zip(calls, plan.layouts, strict=True):
            call.layouts = layouts
        return consumers

    def _attribute_chunk(
        self, inputs: Inputs, target: Tensor | int | None, start: int
    ) -> _Chunk:
        out, calls = self._forward(inputs)
        logits = logits_of(out)
        if not calls:
            raise ProvenanceInputError(
                "no traced layer ran in the forward pass (layer set "
                f"{self.layer_set!r})"
            )
        pred = logits.detach().argmax(1)
        chosen = resolve_targets(target, logits, start)
        y = objective_values(logits, chosen, self.objective).sum()
        if y.grad_fn is None:
            raise ProvenanceInputError(
                "the model's logits do not depend on its parameters"
            )
        batch = pred.shape[0]
        consumers = self._layouts(inputs, calls, logits)
        del out

        ran = {s.name for call in calls for s in self._traced[call.name].layers}
        untraced = [i for i in self._coverage if not set(i.layers) & ran]
        output_edges = [
            (ci, oj, edge)
            for ci, call in enumerate(calls)
            for oj, edge in enumerate(call.edges)
            if edge is not None and (ci, oj) not in consumers
        ]
        consumer_edges = [e for cs in consumers.values() for e in batched_edges(cs)]
        wanted: list[GradientEdge | Tensor] = [e for _, _, e in output_edges]
        wanted += consumer_edges
        wanted += [i.tensor for i in untraced]
        grads = torch.autograd.grad(
            y,
            wanted,
            allow_unused=True,
            materialize_grads=False,
            retain_graph=bool(consumers),
        )
        n_out, n_cons = len(output_edges), len(consumer_edges)
        for call in calls:
            call.grads = [None] * len(call.outputs)
            call.batch = batch
        for (ci, oj, _), g in zip(output_edges, grads[:n_out], strict=True):
            calls[ci].grads[oj] = g
        by_node = {
            (id(e.node), e.output_nr): g
            for e, g in zip(consumer_edges, grads[n_out : n_out + n_cons], strict=True)
        }
        with torch.no_grad():
            for (ci, oj), cs in consumers.items():
                shape = tuple(calls[ci].outputs[oj].shape)
                calls[ci].grads[oj] = per_input_grads(cs, by_node, shape, batch)
            untraced_signal = {
                i.name: float((i.tensor.detach() * g).sum())
                for i, g in zip(untraced, grads[n_out + n_cons :], strict=True)
                if g is not None
            }
        del grads, by_node, consumers, y, logits, wanted, consumer_edges
        for call in calls:  # release the autograd graph
            call.args = tuple(_detach(a) for a in call.args)
            call.kwargs = {k: _detach(v) for k, v in call.kwargs.items()}
            call.outputs = tuple(o.detach() for o in call.outputs)
            call.edges = ()
        contrib, names, peak = self._contributions(calls, batch)
        return _Chunk(contrib, names, pred, chosen, peak, untraced_signal)

    def _contributions(
        self, calls: list[ModuleCall], batch: int
    ) -> tuple[Tensor, tuple[str, ...], int]:
        """``(B, L, K + 1)`` float64 contributions of every layer use."""
        positions: dict[str, int] = {}
        for call in calls:
            for spec in self._traced[call.name].layers:
                positions.setdefault(spec.name, len(positions))
        sets = self._params.num_sets
        step = min(self.client_chunk_size or sets, sets)
        contrib = torch.zeros(
            batch, len(positions), sets, dtype=torch.float64, device=self.device
        )
        captured: dict[int, int] = {}  # storage -> bytes, each storage once
        largest = 0
        with torch.no_grad():
            for call in calls:
                kept = [
                    *call.tensors().values(),
                    *(g for g in call.grads if g is not None),
                ]
                for t in kept:
                    storage = t.untyped_storage()
                    captured[storage.data_ptr()] = storage.nbytes()
                if all(g is None for g in call.grads):
                    continue  # the layer does not influence y
                call.check_unmodified()
                traced = self._traced[call.name]
                for contraction in traced.tracer.contractions(
                    call, traced.layers, step, self._workspace
                ):
                    largest = max(largest, contraction.temp_bytes)
                    column = positions[traced.layers[contraction.layer].name]
                    for first in range(0, sets, step):
                        last = min(first + step, sets)
                        gathered = [
                            self._params.gather(
                                view, first, last, self._workspace, f"gather{i}"
                            )
                            for i, view in enumerate(contraction.views)
                        ]
                        t = contraction.fn(gathered)
                        contrib[:, column, first:last] += t.to(torch.float64)
        peak = (
            sum(captured.values()) + largest + self._workspace.nbytes + nbytes(contrib)
        )
        return contrib, tuple(positions), peak


def _traced_modules(
    model: nn.Module, tracers: tuple[LayerTracer, ...]
) -> tuple[dict[str, _Traced], dict[str, str]]:
    """Traced modules with their layers, and modules a tracer refused (why)."""
    traced: dict[str, _Traced] = {}
    untraceable: dict[str, str] = {}
    claimed: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.running_mean is None or module.running_var is None
        ):
            raise ProvenanceInputError(
                f"{type(module).__name__} '{name}' has no running statistics "
                "(track_running_stats=False): it normalises with batch statistics "
                "even in eval mode, so an input's prediction depends on the other "
                "inputs and cannot be attributed per input"
            )
        if any(name.startswith(f"{c}.") or c == "" for c in claimed):
            continue
        if ".parametrizations." in f".{name}." or name.endswith("parametrizations"):
            continue
        tracer = find_tracer(module, tracers)
        if tracer is None:
            continue
        try:
            specs = tracer.layers(module, name)
        except UntraceableError as err:
            untraceable[name] = err.reason
            continue
        if specs:
            traced[name] = _Traced(module, tracer, specs)
            if tracer.claims_children:
                claimed.append(name)
    return traced, untraceable


def _layer_set(
    layers: str | tuple[LayerTracer, ...],
) -> tuple[str, tuple[LayerTracer, ...]]:
    """``(name, tracers)`` for ``layers=``: a name of ``LAYER_SETS`` or tracers."""
    if isinstance(layers, str):
        if layers not in LAYER_SETS:
            raise ProvenanceInputError(
                f"layers={layers!r} is not one of {sorted(LAYER_SETS)} "
                "(or a tuple of LayerTracer)"
            )
        return layers, LAYER_SETS[layers]
    if (
        not isinstance(layers, tuple)
        or not layers
        or not all(isinstance(t, LayerTracer) for t in layers)
    ):
        raise ProvenanceInputError(
            f"layers must be one of {sorted(LAYER_SETS)} or a non-empty tuple of "
            f"LayerTracer, got {layers!r}"
        )
    return "custom", layers


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProvenanceInputError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ProvenanceInputError(f"{name} must be >= 1, got {value}")
    return value


def _detach(value: object) -> object:
    return value.detach() if isinstance(value, Tensor) else value
