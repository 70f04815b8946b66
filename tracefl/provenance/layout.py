"""Where the batch is in a tensor seen by a traced layer, found, not assumed.

Inputs are independent in eval mode, so every element of a layer's input or
output belongs to one input ``b`` of the batch, or to none (a tensor shared by
all inputs, e.g. BERT's position embeddings). A layer does not have to put the
batch first: ``nn.TransformerEncoderLayer(batch_first=False)`` feeds its linear
layers ``(T, B, D)``, attention flattens ``(T * B, D)``, user code may flatten
``(B * T, D)``.

The layout is found by comparing each tensor with the same tensor in a *probe*
forward pass on the first two inputs (three when ``B == 2``; inputs repeated
when ``B`` is smaller): the dimension whose size scales with the batch size is
the batch dimension; if it grows by ``m > 1`` per input, the batch is flattened
into it, and the values of the inputs both passes share tell whether its rows
are ordered input-major (``b * m + t``) or input-minor (``t * B + b``); a tensor
whose shape does not change is shared. (Two inputs, not one, so that a model
that squeezes a batch of one does not change rank.) Comparing two batch sizes is
immune to coincidences such as a sequence length equal to the batch size.
Anything else raises :class:`ProvenanceInputError` naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .validation import ProvenanceInputError


@dataclass(frozen=True)
class BatchLayout:
    """How the batch of ``B`` inputs sits in one tensor.

    Attributes
    ----------
    kind
        ``"dim"``: dimension ``dim`` has size ``B``; ``"flat"``: dimension ``dim``
        has size ``B * m`` (``m > 1`` rows per input); ``"shared"``: no batch
        dimension, the tensor is the same for every input.
    dim
        The batch (or flattened) dimension; ``0`` for ``"shared"``.
    input_major
        ``"flat"`` only: rows ordered ``b * m + t`` (``True``) or ``t * B + b``.

    """

    kind: str
    dim: int = 0
    input_major: bool = True

    def describe(self) -> str:
        """Short text for error messages and the coverage report."""
        if self.kind == "dim":
            return f"batch at dim {self.dim}"
        if self.kind == "flat":
            order = "input-major" if self.input_major else "input-minor"
            return f"batch flattened into dim {self.dim} ({order})"
        return "shared by all inputs"

    def to_batch_first(self, t: Tensor, batch: int) -> Tensor:
        """View ``t`` as ``(B, *per_input_shape)``.

        ``"dim"`` moves the batch dimension first; ``"flat"`` splits the
        flattened dimension into ``(B, m)`` and moves ``B`` first (the per-input
        shape keeps ``m`` at ``dim``); ``"shared"`` expands ``t`` to
        ``(B, *t.shape)`` without copying.
        """
        if self.kind == "dim":
            return t.movedim(self.dim, 0)
        if self.kind == "flat":
            if self.input_major:
                return t.unflatten(self.dim, (batch, -1)).movedim(self.dim, 0)
            return t.unflatten(self.dim, (-1, batch)).movedim(self.dim + 1, 0)
        return t.unsqueeze(0).expand(batch, *t.shape)


SHARED = BatchLayout("shared")


def find_layout(
    main: Tensor, probe: Tensor, batch: int, probe_batch: int, what: str
) -> BatchLayout:
    """Layout of ``main`` (batch ``B``) from the same tensor in a probe pass.

    Parameters
    ----------
    main
        The tensor in the forward pass on the ``B`` inputs.
    probe
        The same tensor in the probe pass on ``probe_batch != B`` inputs, the
        first ``min(B, probe_batch)`` of which are the first of ``main``'s.
    batch, probe_batch
        The two batch sizes.
    what
        The tensor's description for errors (e.g. ``"input of layer 'fc'"``).

    """
    if main.dim() != probe.dim():
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: it has "
            f"{main.dim()} dimensions for {batch} inputs but {probe.dim()} for "
            f"{probe_batch}"
        )
    changed = [d for d in range(main.dim()) if main.shape[d] != probe.shape[d]]
    if not changed:
        if not _same_values(main, probe):
            raise ProvenanceInputError(
                f"cannot determine the batch layout of the {what}: its shape "
                f"{tuple(main.shape)} does not depend on the batch size but its "
                "values do (it mixes inputs, e.g. batch statistics)"
            )
        return SHARED
    if len(changed) > 1:
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: dimensions "
            f"{changed} all change with the batch size (shapes "
            f"{tuple(main.shape)} for {batch} inputs, {tuple(probe.shape)} for "
            f"{probe_batch})"
        )
    d = changed[0]
    size, probe_size = main.shape[d], probe.shape[d]
    per_input = size // batch
    if size % batch or per_input * probe_batch != probe_size:
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: dim {d} has size "
            f"{size} for {batch} inputs and {probe_size} for {probe_batch}, not a "
            "fixed number per input"
        )
    if per_input == 1:
        return BatchLayout("dim", d)
    if batch == 1:  # one input in the main pass: both orders are the same
        return BatchLayout("flat", d, True)
    # The first min(B, B') inputs are the same in both passes: compare their rows
    # under each order.
    major = minor = True
    for b in range(min(batch, probe_batch)):
        major = major and _same_values(
            main.narrow(d, b * per_input, per_input),
            probe.narrow(d, b * per_input, per_input),
        )
        minor = minor and _same_values(
            main.index_select(d, torch.arange(b, size, batch, device=main.device)),
            probe.index_select(
                d, torch.arange(b, probe_size, probe_batch, device=probe.device)
            ),
        )
    if major == minor:
        found = "both" if major else "neither"
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: dim {d} holds "
            f"{per_input} rows per input but {found} of the input-major and "
            "input-minor orders match the probe (identical or batch-dependent rows)"
        )
    return BatchLayout("flat", d, major)


def find_layout_of_shapes(
    main: tuple[int, ...],
    probe: tuple[int, ...],
    batch: int,
    probe_batch: int,
    what: str,
) -> BatchLayout:
    """Layout from shapes alone: a batch dimension, or shared.

    For tensors the engine cannot read (autograd node outputs). A flattened batch
    needs values to tell its order and is refused when ``B > 1``.
    """
    if len(main) != len(probe):
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: rank {len(main)} for "
            f"{batch} inputs, {len(probe)} for {probe_batch}"
        )
    changed = [d for d in range(len(main)) if main[d] != probe[d]]
    if not changed:
        return SHARED
    d = changed[0]
    if len(changed) > 1 or main[d] != batch or probe[d] != probe_batch:
        if (
            len(changed) == 1
            and main[d] % batch == 0
            and main[d] // batch * probe_batch == probe[d]
            and batch == 1
        ):
            return BatchLayout("flat", d, True)
        raise ProvenanceInputError(
            f"cannot determine the batch layout of the {what}: shapes {main} for "
            f"{batch} inputs and {probe} for {probe_batch}"
        )
    return BatchLayout("dim", d)


def _same_values(a: Tensor, b: Tensor) -> bool:
    """Equal up to the round-off of a different batch size (exact for integers)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-30))
