"""TraceFL neuron provenance (ICSE'25, Section IV, Algorithm 1), vectorised.

For an input ``x`` the global model predicts ``y_hat = argmax(logits)`` and
``y = logits[y_hat]`` (the raw logit). For every traced layer ``l`` (each
``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm`` and transformers' GPT-2 ``Conv1D``
called during the forward pass, in order of execution), with ``z_l`` the global
model's input to the layer and ``c_l = dy/d(layer output)``, client ``k``
contributes ::

    t_{l,k} = sum_j c_l[j] * layer_l(z_l; W_k, b_k)[j]        (Eq. 5)

(``j`` runs over every output element: channel x position, token x feature).
``T_k = sum_l beta_l * p_k^s * t_{l,k}`` with ``beta_l = decay**(L-1-l)`` (``1``
when ``enable_beta=False``) and ``p_k = n_k / sum(n)`` when
``scale_by_data_share`` (``s = 1``, otherwise ``s = 0``). Since each layer output
is linear in its parameters, scaling the parameters by ``p_k`` (as in the paper)
equals scaling ``t_{l,k}`` by ``p_k``, which is what we do. ``probs =
softmax(T)`` (Eq. 7) and the traced client is ``argmax(T)``.

How it is computed (same math, different evaluation order):

1. One batched forward + one ``torch.autograd.grad`` of ``sum_b y_b`` in eval
   mode gives every input's ``c_l`` at once (inputs are independent in eval
   mode). Gradients are taken w.r.t. the *gradient edge* of each layer output as
   recorded when the layer ran, so a later in-place op (``ReLU(inplace=True)``)
   does not change ``c_l``. No ``.grad`` of the user's model is touched.
2. Per layer, ``t_{l,k}`` for all inputs and clients is one batched product with
   the ``K`` clients' parameters, stacked once per engine (i.e. per round); see
   :mod:`tracefl.provenance.layers` for the per-family kernels and the shape-based
   choice between the per-sample-gradient and the stacked-weights forms.
3. The batch is processed in chunks of ``chunk_size`` inputs to bound memory;
   large temporaries (per-sample gradients, unfolded patches) live in buffers
   reused across layers and calls, so one engine must not be used from several
   threads at once.

Deviation from the original artifact: the original TraceFL traced a BERT's
``BertLayer`` blocks as whole units. We trace their inner affine layers
(``nn.Linear`` and ``nn.LayerNorm``, plus the embedding LayerNorm, pooler and
classifier) instead, which keeps every traced computation exactly linear in the
client parameters and so the attribution exact. Not traced: BatchNorm,
embeddings, parameter-free layers (e.g. ``LayerNorm(elementwise_affine=False)``).

A traced module called more than once per forward (weight sharing in time) is
rejected with :class:`ProvenanceInputError`; its ``z_l`` would be ambiguous.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from .layers import LAYER_SETS, LayerTracer, StackedParams, Workspace, find_tracer
from .objective import check_objective, objective_values
from .result import ProvenanceResult
from .validation import (
    Inputs,
    ProvenanceInputError,
    Target,
    batch_size_of,
    check_finite_state,
    check_input_dtype,
    check_target,
    client_state,
    describe_inputs,
    resolve_targets,
    validate_client_ids,
    validate_client_weights,
)


@dataclass
class _Record:
    """What the forward hook captures for one traced layer call."""

    name: str
    z: Tensor
    z_version: int
    edge: GradientEdge


class NeuronProvenance:
    """Attribute global-model predictions to the clients of one FL round.

    Parameters
    ----------
    global_model
        The aggregated model. It is put in eval mode during :meth:`attribute`
        (its training flag and ``requires_grad`` flags are restored afterwards).
    client_models
        ``K`` client models of the global model's class, or their state dicts
        (every parameter of the global model must be present; buffers optional).
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
    device
        Where to compute. Defaults to the global model's device. If it differs,
        a private copy of the global model is moved there (the user's module is
        never moved).
    chunk_size
        Number of inputs per forward/backward chunk (bounds peak memory).
    objective
        What ``y`` is, see :mod:`tracefl.provenance.objective`: ``"logit"`` (the
        paper), ``"log_softmax"`` or ``"margin"``.
    layers
        Traced layer families: ``"all"`` (every family the engine knows, the
        default), ``"paper"`` (the original artifact's Linear, Conv2d, LayerNorm
        and GPT-2 Conv1D) or a tuple of :class:`LayerTracer` (``"custom"``).

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
        device: str | torch.device | None = None,
        chunk_size: int = 32,
        objective: str = "logit",
        layers: str | tuple[LayerTracer, ...] = "all",
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
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise ProvenanceInputError(f"chunk_size must be an int, got {chunk_size!r}")
        if chunk_size < 1:
            raise ProvenanceInputError(f"chunk_size must be >= 1, got {chunk_size}")
        self.objective = check_objective(objective)
        self.layer_set, tracers = _layer_set(layers)

        self.client_ids = validate_client_ids(client_ids, len(client_models))
        self.client_weights = validate_client_weights(client_weights, self.client_ids)
        self.decay = float(decay)
        self.enable_beta = bool(enable_beta)
        self.scale_by_data_share = bool(scale_by_data_share)
        self.chunk_size = chunk_size

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
        shapes = {n: t.shape for n, t in global_state.items()}

        # Traced modules and their tracers (order fixed later by the forward pass).
        self._modules: dict[str, tuple[nn.Module, LayerTracer]] = {}
        for name, module in global_model.named_modules():
            tracer = find_tracer(module, tracers)
            if tracer is None or not isinstance(
                getattr(module, "weight", None), nn.Parameter
            ):
                continue
            tracer.check_supported(module, name)
            self._modules[name] = (module, tracer)
        if not self._modules:
            raise ProvenanceInputError(
                "global model has no traced layers (Linear, Conv2d, LayerNorm, "
                "Conv1D with parameters)"
            )

        traced_keys = {
            f"{name}.{pname}" if name else pname
            for name, (module, tracer) in self._modules.items()
            for pname in tracer.param_names(module)
        }
        states = [
            client_state(c, global_model, shapes, traced_keys, cid)
            for c, cid in zip(client_models, self.client_ids, strict=True)
        ]
        # Stack each traced layer's client parameters once: (K, *param.shape).
        self._stacked: dict[str, StackedParams] = {}
        for name, (module, tracer) in self._modules.items():
            stacked = {}
            for pname in tracer.param_names(module):
                key = f"{name}.{pname}" if name else pname
                stacked[pname] = torch.stack(
                    [s[key].detach().to(self.device, self.dtype) for s in states]
                )
            self._stacked[name] = StackedParams(stacked["weight"], stacked.get("bias"))
        n = torch.tensor(self.client_weights, dtype=torch.float64)
        self._data_share = n / n.sum()
        self._workspace = Workspace()

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
            ``(B, ...)`` tensors passed as ``model(**inputs)``.
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
            ``predicted_labels`` and ``targets`` ``(B,)`` int64.
            ``peak_memory_bytes`` is, on CUDA, ``torch.cuda.max_memory_allocated``
            over the call; on CPU, an estimate:
            stacked client parameters + for the largest chunk the captured layer
            inputs and output gradients + the largest per-layer temporary
            (autograd's own saved activations are not counted).

        """
        batch = batch_size_of(inputs)
        checked_target = check_target(target, batch)
        check_input_dtype(inputs, self.model, self.dtype)
        inputs = _to_device(inputs, self.device)
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
            parts, preds, targets, names, chunk_peak = self._attribute(
                inputs, batch, checked_target
            )
        finally:
            for p, flag in saved_flags:
                p.requires_grad_(flag)
            model.train(was_training)

        per_layer = torch.cat(parts)  # (B, L, K) float64, unweighted t_{l,k}
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
            peak = chunk_peak + sum(s.nbytes for s in self._stacked.values())
        return ProvenanceResult(
            scores=scores,
            probs=torch.softmax(scores, dim=1),
            traced=scores.argmax(1),
            client_ids=self.client_ids,
            predicted_labels=torch.cat(preds),
            targets=torch.cat(targets),
            objective=self.objective,
            layer_set=self.layer_set,
            layer_names=names,
            per_layer=per_layer if return_per_layer else None,
            peak_memory_bytes=peak,
        )

    # ----------------------------------------------------------------- private
    def _attribute(
        self, inputs: Inputs, batch: int, target: Tensor | int | None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], tuple[str, ...], int]:
        parts: list[Tensor] = []
        preds: list[Tensor] = []
        targets: list[Tensor] = []
        names: tuple[str, ...] | None = None
        peak = 0
        for start in range(0, batch, self.chunk_size):
            chunk = _slice(inputs, start, start + self.chunk_size)
            contrib, pred, chosen, chunk_names, chunk_peak = self._attribute_chunk(
                chunk, target, start
            )
            if names is None:
                names = chunk_names
            elif names != chunk_names:
                raise ProvenanceInputError(
                    "the traced layers differ between chunks of the batch; the "
                    "model's control flow must not depend on the input"
                )
            parts.append(contrib)
            preds.append(pred)
            targets.append(chosen)
            peak = max(peak, chunk_peak)
        assert names is not None
        return parts, preds, targets, names, peak

    def _attribute_chunk(
        self, inputs: Inputs, target: Tensor | int | None, start: int
    ) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], int]:
        """``(B, L, K)`` float64 contributions, ``(B,)`` predictions and targets."""
        records: list[_Record] = []
        seen: set[str] = set()

        def make_hook(name: str):
            def hook(module, args, kwargs, output):
                if name in seen:
                    raise ProvenanceInputError(
                        f"traced layer '{name}' is called more than once per "
                        "forward pass; shared layers are not supported"
                    )
                seen.add(name)
                z = args[0] if args else next(iter(kwargs.values()))
                if not isinstance(output, Tensor) or not output.requires_grad:
                    raise ProvenanceInputError(
                        f"traced layer '{name}' did not return a differentiable tensor"
                    )
                records.append(_Record(name, z, z._version, get_gradient_edge(output)))

            return hook

        handles = []
        try:
            for name, (module, _) in self._modules.items():
                handles.append(
                    module.register_forward_hook(make_hook(name), with_kwargs=True)
                )
            with torch.enable_grad():
                try:
                    out = (
                        self.model(**inputs)
                        if isinstance(inputs, Mapping)
                        else self.model(inputs)
                    )
                except ProvenanceInputError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as err:
                    raise ProvenanceInputError(
                        f"global model failed on inputs ({describe_inputs(inputs)}): "
                        f"{err}"
                    ) from err
        finally:
            for h in handles:
                h.remove()

        logits = _logits(out)
        if not records:
            raise ProvenanceInputError(
                "no traced layer (Linear, Conv2d, LayerNorm, Conv1D) ran in the "
                "forward pass"
            )
        pred = logits.detach().argmax(1)
        chosen = resolve_targets(target, logits, start)
        y = objective_values(logits, chosen, self.objective).sum()
        grads = torch.autograd.grad(
            y, [r.edge for r in records], allow_unused=True, materialize_grads=False
        )
        del out, logits, y

        b = pred.shape[0]
        k = len(self.client_ids)
        contrib = torch.zeros(
            b, len(records), k, dtype=torch.float64, device=self.device
        )
        captured = 0
        largest_temp = 0
        with torch.no_grad():
            for li, (rec, c) in enumerate(zip(records, grads, strict=True)):
                captured += _nbytes(rec.z) + (_nbytes(c) if c is not None else 0)
                if c is None:  # the layer does not influence y
                    continue
                if rec.z._version != rec.z_version:
                    raise ProvenanceInputError(
                        f"the input of traced layer '{rec.name}' was modified in place "
                        "after the layer ran; z_l is no longer available"
                    )
                module, tracer = self._modules[rec.name]
                t, temp = tracer.contributions(
                    module, rec.z, c, self._stacked[rec.name], self._workspace
                )
                largest_temp = max(largest_temp, temp)
                contrib[:, li] = t.to(torch.float64)
        names = tuple(r.name for r in records)
        return contrib, pred, chosen, names, captured + largest_temp


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


def _logits(out: object) -> Tensor:
    """Extract ``(B, C)`` logits from a tensor, ``.logits`` object or mapping."""
    if isinstance(out, Tensor):
        logits = out
    elif isinstance(getattr(out, "logits", None), Tensor):
        logits = out.logits  # type: ignore[attr-defined]
    elif isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
        logits = out["logits"]
    else:
        raise ProvenanceInputError(
            f"model output of type {type(out).__name__} has no logits tensor"
        )
    if logits.dim() != 2:
        raise ProvenanceInputError(
            f"model logits must have shape (B, C), got {tuple(logits.shape)}"
        )
    return logits


def _slice(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {k: v[start:stop] for k, v in inputs.items()}


def _to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    return {k: v.to(device) for k, v in inputs.items()}


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()
