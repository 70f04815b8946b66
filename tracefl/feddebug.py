"""FedDebug faulty-client localization (Gill et al., ICSE 2023), pure PyTorch.

This is the comparator TraceFL evaluates against (TraceFL paper, Section V-B,
Table I and Fig. 6).  FedDebug localizes faulty clients of one FL round by
*differential testing of neuron activations*:

1. Generate ``num_inputs`` random inputs of the model's input shape.  We draw
   them **uniformly from [0, 1)** (``torch.rand``, as FedDebug's reference
   implementation does) from a CPU ``torch.Generator`` seeded with ``seed``,
   so the inputs -- and hence the result -- are identical for a fixed seed on
   every device.
2. Run the whole batch of inputs through every client model (eval mode, no
   grad) and record the output of every ``nn.Conv2d`` and ``nn.Linear`` layer
   with forward hooks.  Each output is passed through ReLU; a Conv2d neuron is
   one channel whose spatial map is reduced by its mean (as in FedDebug's
   implementation), a Linear neuron is one output feature.  Per input and per
   layer, neuron values are min-max scaled to [0, 1]; a neuron is *active* if
   its scaled value exceeds ``na_threshold``.
3. For each input, over the leave-one-out subsets of the clients, count the
   neurons active in *all* members of the subset; the client left out of the
   subset with the largest count is that input's suspect (ties -> lowest
   client index).  For ``num_faulty > 1`` the suspect is removed from the
   client set and the search is repeated on the remaining clients (FedDebug's
   iterative scheme) until ``num_faulty`` suspects are found per input.
4. Majority vote over inputs: the ``num_faulty`` most frequently suspected
   clients (ties -> client order) are the answer.

FedDebug needs continuous (float) model inputs; for text models (anything with
an ``nn.Embedding``) TraceFL reports "n/a", see :func:`feddebug_applicable`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "FedDebugResult",
    "feddebug_applicable",
    "localize_faulty_clients",
]

_HOOKED_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
_TEXT_LAYERS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class FedDebugResult:
    """Outcome of one FedDebug localization.

    Attributes
    ----------
    faulty_client_ids
        Majority-vote answer, length ``num_faulty``, most-voted first.
    per_input_suspects
        Shape ``(num_inputs, num_faulty)``: the suspects found for each random
        input, in the order the iterative search found them.
    vote_counts
        Number of times each client (all clients, in input order) was
        suspected over all inputs and all ``num_faulty`` search steps.
    seconds
        Wall time of the localization (input generation, forward passes,
        search and vote).
    """

    faulty_client_ids: tuple[str, ...]
    per_input_suspects: tuple[tuple[str, ...], ...]
    vote_counts: dict[str, int]
    seconds: float


def feddebug_applicable(model: nn.Module) -> bool:
    """Return whether FedDebug can localize faults for ``model``.

    FedDebug feeds *random continuous* inputs to the models, which is only
    meaningful for models that consume float tensors (image models).  Text
    models start with an ``nn.Embedding`` / ``nn.EmbeddingBag`` over token ids,
    so random float inputs are not valid inputs -- TraceFL reports FedDebug as
    "n/a" for them.  A model without any ``nn.Conv2d``/``nn.Linear`` layer has
    no neurons FedDebug could observe and is not applicable either.
    """
    has_neurons = False
    for module in model.modules():
        if isinstance(module, _TEXT_LAYERS):
            return False
        if isinstance(module, _HOOKED_LAYERS):
            has_neurons = True
    return has_neurons


def localize_faulty_clients(
    client_models: Sequence[nn.Module],
    client_ids: Sequence[str],
    input_shape: tuple[int, ...],
    *,
    num_faulty: int = 1,
    num_inputs: int = 10,
    na_threshold: float = 0.003,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> FedDebugResult:
    """Localize the faulty clients of one FL round with FedDebug.

    Parameters
    ----------
    client_models
        The ``K >= 2`` client models of the round, same architecture.  They are
        not modified: training flags are restored and all hooks removed, even
        on error.  A model whose parameters are not on ``device`` is run as a
        deep copy moved there.
    client_ids
        ``K`` distinct client identifiers, aligned with ``client_models``.
    input_shape
        Per-sample input shape, e.g. ``(1, 28, 28)``; the random batch has
        shape ``(num_inputs, *input_shape)``.
    num_faulty
        Number of faulty clients to localize, ``1 <= num_faulty < K``.
    num_inputs
        Number of random inputs (votes), ``>= 1``.
    na_threshold
        Neuron-activation threshold on min-max scaled values, in ``[0, 1)``.
    seed
        Seed of the random inputs.
    device
        Device the forward passes run on.

    Returns
    -------
    FedDebugResult
    """
    _validate(client_models, client_ids, input_shape, num_faulty, num_inputs)
    if not 0.0 <= float(na_threshold) < 1.0:
        raise ValueError(f"na_threshold must be in [0, 1), got {na_threshold!r}")
    ids = [str(c) for c in client_ids]
    start = time.perf_counter()

    dev = torch.device(device)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    # (num_inputs, *input_shape) uniform in [0, 1), drawn on CPU for
    # device-independent determinism.
    inputs = torch.rand((num_inputs, *input_shape), generator=generator)

    per_client = [
        _active_neurons(model, inputs, dev, float(na_threshold), k)
        for k, model in enumerate(client_models)
    ]
    sizes = {a.shape[1] for a in per_client}
    if len(sizes) != 1:
        raise ValueError(
            "client_models must share one architecture: observed Conv2d/Linear "
            f"neuron counts {[a.shape[1] for a in per_client]}"
        )
    active = torch.stack(per_client, dim=1)  # (num_inputs, K, N) bool
    suspects = _leave_one_out_suspects(active, num_faulty)  # (num_inputs, F)

    votes = torch.bincount(suspects.flatten(), minlength=len(ids)).tolist()
    # Stable sort: equal vote counts keep client order.
    ranked = sorted(range(len(ids)), key=lambda k: -votes[k])
    seconds = time.perf_counter() - start
    return FedDebugResult(
        faulty_client_ids=tuple(ids[k] for k in ranked[:num_faulty]),
        per_input_suspects=tuple(
            tuple(ids[k] for k in row) for row in suspects.tolist()
        ),
        vote_counts={cid: int(v) for cid, v in zip(ids, votes, strict=True)},
        seconds=seconds,
    )


def _validate(
    client_models: Sequence[nn.Module],
    client_ids: Sequence[str],
    input_shape: tuple[int, ...],
    num_faulty: int,
    num_inputs: int,
) -> None:
    """Raise ``ValueError`` naming the offending argument and what is allowed."""
    n_clients = len(client_models)
    if n_clients < 2:
        raise ValueError(
            f"client_models must contain at least 2 models, got {n_clients}"
        )
    for k, model in enumerate(client_models):
        problem = _model_problem(model)
        if problem:
            raise ValueError(f"client_models[{k}] ({type(model).__name__}) {problem}")
    if len(client_ids) != n_clients:
        raise ValueError(
            f"client_ids must have one id per model ({n_clients}), "
            f"got {len(client_ids)}"
        )
    str_ids = [str(c) for c in client_ids]
    if len(set(str_ids)) != len(str_ids):
        dupes = sorted({c for c in str_ids if str_ids.count(c) > 1})
        raise ValueError(f"client_ids must be distinct, got duplicates {dupes}")
    if (
        not isinstance(input_shape, tuple | list)
        or len(input_shape) == 0
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0
            for d in input_shape
        )
    ):
        raise ValueError(
            "input_shape must be a non-empty tuple of positive ints (per-sample "
            f"shape, e.g. (1, 28, 28)), got {input_shape!r}"
        )
    if (
        not isinstance(num_faulty, int)
        or isinstance(num_faulty, bool)
        or not 1 <= num_faulty < n_clients
    ):
        raise ValueError(
            f"num_faulty must be an int in [1, {n_clients - 1}] (fewer than the "
            f"{n_clients} clients), got {num_faulty!r}"
        )
    if (
        not isinstance(num_inputs, int)
        or isinstance(num_inputs, bool)
        or num_inputs < 1
    ):
        raise ValueError(f"num_inputs must be an int >= 1, got {num_inputs!r}")


def _model_problem(model: object) -> str:
    """Why ``model`` cannot be debugged by FedDebug, or ``""`` if it can."""
    if not isinstance(model, nn.Module):
        return "must be a torch.nn.Module"
    if not any(isinstance(m, _HOOKED_LAYERS) for m in model.modules()):
        return "has no nn.Conv2d or nn.Linear layer; FedDebug needs neurons"
    return ""


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Device equality that treats an unspecified index as a wildcard."""
    return a.type == b.type and (a.index is None or b.index is None or a == b)


def _active_neurons(
    model: nn.Module,
    inputs: torch.Tensor,
    device: torch.device,
    threshold: float,
    index: int,
) -> torch.Tensor:
    """Boolean neuron-activation matrix of one model.

    Parameters
    ----------
    model
        Client model; run in eval mode under ``torch.no_grad`` with temporary
        forward hooks on every ``nn.Conv2d``/``nn.Linear``.
    inputs
        ``(B, *input_shape)`` random CPU batch.
    device, threshold, index
        Device to run on, activation threshold, position (for error messages).

    Returns
    -------
    torch.Tensor
        ``(B, N)`` bool on CPU, ``N`` = neurons of all hooked layer calls in
        execution order (a Conv2d neuron is a channel, a Linear neuron an
        output feature).
    """
    param = next(iter(model.parameters()), None)
    run_model = model
    if param is not None and not _same_device(param.device, device):
        run_model = copy.deepcopy(model).to(device)  # never move the caller's
    dtype = param.dtype if param is not None and param.is_floating_point() else None
    batch = inputs.to(device=device, dtype=dtype or inputs.dtype)

    outputs: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: object, out: torch.Tensor) -> None:
        outputs.append(out.detach())

    flags = [(m, m.training) for m in run_model.modules()]
    handles = []
    try:
        for module in run_model.modules():
            if isinstance(module, _HOOKED_LAYERS):
                handles.append(module.register_forward_hook(hook))
        run_model.eval()
        with torch.no_grad():
            run_model(batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag

    if not outputs:
        raise ValueError(
            f"client_models[{index}] ran no nn.Conv2d/nn.Linear layer on inputs "
            "of the given input_shape"
        )
    layers = [_scaled_layer(out, batch.shape[0]) for out in outputs]
    return (torch.cat(layers, dim=1) > threshold).cpu()


def _scaled_layer(out: torch.Tensor, batch: int) -> torch.Tensor:
    """ReLU, per-neuron reduction and per-input min-max scaling of one layer.

    Parameters
    ----------
    out
        Layer output: ``(B, C, H, W)`` for Conv2d, ``(B, ..., F)`` for Linear.
    batch
        ``B``, to recognise an unbatched output.

    Returns
    -------
    torch.Tensor
        ``(B, n)`` float in [0, 1]; a layer whose neurons are all equal for
        an input (max == min) scales to all zeros there, i.e. no active
        neuron, instead of dividing by zero.
    """
    out = torch.relu(out.float())
    if out.dim() == 4:  # Conv2d: a neuron is a channel, reduce its map by mean
        values = out.mean(dim=(2, 3))
    elif out.dim() == 2 and out.shape[0] == batch:  # Linear (B, F)
        values = out
    else:  # Linear over extra dims (B, ..., F): average the extra dims
        values = out.reshape(batch, -1, out.shape[-1]).mean(dim=1)
    lo = values.min(dim=1, keepdim=True).values
    hi = values.max(dim=1, keepdim=True).values
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (values - lo) / safe, torch.zeros_like(values))


def _leave_one_out_suspects(active: torch.Tensor, num_faulty: int) -> torch.Tensor:
    r"""Iterative leave-one-out search, vectorised over inputs, clients, neurons.

    For each input and remaining client set ``R`` (``m = |R|`` clients), a
    neuron is active in all of ``R \\ {k}`` iff ``count - active[k] == m - 1``
    where ``count`` is the number of clients of ``R`` in which it is active
    (i.e. active in all of ``R``, or in all but ``k`` and not in ``k``).  The
    ``k`` maximising the number of such neurons is the suspect; it is removed
    from ``R`` and the search repeats.

    Parameters
    ----------
    active
        ``(I, K, N)`` bool, neuron activations per input and client.
    num_faulty
        Number of search rounds ``F``, ``1 <= F < K`` (so ``m - 1 >= 1``).

    Returns
    -------
    torch.Tensor
        ``(I, F)`` int64 client indices in the order they were found; ties go
        to the lowest index (``argmax`` returns the first maximum).
    """
    n_inputs, n_clients, _ = active.shape
    act = active.to(torch.int32)
    remaining = torch.ones(n_inputs, n_clients, dtype=torch.bool)
    suspects = torch.empty(n_inputs, num_faulty, dtype=torch.int64)
    rows = torch.arange(n_inputs)
    for step in range(num_faulty):
        members = n_clients - step
        masked = act * remaining.unsqueeze(-1)  # (I, K, N)
        count = masked.sum(dim=1, keepdim=True)  # (I, 1, N)
        shared = (count - masked == members - 1).sum(dim=-1)  # (I, K)
        shared = shared.masked_fill(~remaining, -1)  # removed clients can't win
        pick = shared.argmax(dim=1)  # (I,)
        suspects[:, step] = pick
        remaining[rows, pick] = False
    return suspects
