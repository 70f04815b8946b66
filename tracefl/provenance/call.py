"""One recorded call of a traced module, and its tensors seen batch-first.

The forward hook keeps what the module received and returned; after the
backward pass the engine adds each tensor's batch layout and each output's
gradient ``c = dy/d output``. Tracers then read the tensors through
:meth:`ModuleCall.rows` (features last, any leading dimensions) or
:meth:`ModuleCall.images` (``(N, C, *spatial)`` modules), which put the ``B``
inputs first whatever the layer's own layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from .layout import BatchLayout
from .validation import ProvenanceInputError


@dataclass
class ModuleCall:
    """What one call of a traced module saw.

    Attributes
    ----------
    name
        Qualified module name.
    module
        The global model's module (read-only).
    args, kwargs
        What the module was called with.
    outputs
        The call's tensor outputs, in order (a tuple output is flattened; non-
        tensor items are dropped).
    edges
        Gradient edge of each output as recorded when the module returned (so
        that later in-place operations do not change ``c``); ``None`` where the
        output is not differentiable.
    versions
        ``_version`` of every tensor argument at call time.
    batch
        Number of inputs ``B``.
    layouts
        Batch layout of the tensors the tracer needs, by key (``"arg0"``,
        ``"kw:<name>"``, ``"out0"``).
    grads
        Per output: ``c`` in the output's own layout, or ``(B, *shape)``
        per-input gradients for an output shared by all inputs; ``None`` when
        ``y`` does not depend on it.

    """

    name: str
    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: tuple[Tensor, ...]
    edges: tuple[GradientEdge | None, ...]
    versions: dict[str, int]
    batch: int = 0
    layouts: dict[str, BatchLayout] = field(default_factory=dict)
    grads: list[Tensor | None] = field(default_factory=list)

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the call by key: ``arg<i>``, ``kw:<name>``, ``out<i>``."""
        found = {f"arg{i}": a for i, a in enumerate(self.args) if isinstance(a, Tensor)}
        found.update(
            {f"kw:{k}": v for k, v in self.kwargs.items() if isinstance(v, Tensor)}
        )
        found.update({f"out{i}": o for i, o in enumerate(self.outputs)})
        return found

    def tensor(self, key: str) -> Tensor:
        """The tensor ``key`` (``arg<i>``, ``kw:<name>``, ``out<i>``)."""
        try:
            return self.tensors()[key]
        except KeyError:
            raise ProvenanceInputError(
                f"layer '{self.name}' was called without the tensor {key!r} its "
                "tracer needs"
            ) from None

    def check_unmodified(self) -> None:
        """Raise if a tensor argument was modified in place after the call."""
        for key, t in self.tensors().items():
            if key in self.versions and t._version != self.versions[key]:
                raise ProvenanceInputError(
                    f"the input of traced layer '{self.name}' was modified in place "
                    "after the layer ran; z_l is no longer available"
                )

    def batch_first(self, key: str) -> Tensor:
        """Tensor ``key`` as ``(B, *per_input_shape)``.

        For an output key (``out<i>``) this is the *gradient* ``c`` of that output
        (``None`` outputs are not asked for).
        """
        if key.startswith("out"):
            grad = self.grads[int(key[3:])]
            assert grad is not None
            layout = self.layouts[key]
            if layout.kind == "shared":
                return grad  # already (B, *shape), one gradient per input
            return layout.to_batch_first(grad, self.batch)
        return self.layouts[key].to_batch_first(self.tensor(key), self.batch)

    def rows(self, key: str, feature_dims: int = 1) -> Tensor:
        """``(B, R, *features)``: tensor (or output gradient) ``key`` as rows.

        The last ``feature_dims`` dimensions are kept and every other per-input
        dimension is flattened into ``R`` rows.
        """
        t = self.batch_first(key)
        features = t.shape[t.dim() - feature_dims :]
        return t.reshape(t.shape[0], -1, *features)

    def images(self, key: str, batched_dims: int) -> Tensor:
        """``(B, N, C, *spatial)`` for a module taking ``(N, C, *spatial)``.

        ``N`` is the number of images per input (1 unless the batch is flattened
        into dimension 0, as in ``(B * T, C, L)``). ``batched_dims`` is the rank
        of the module's batched input (3 for ``Conv1d``). The batch must be at
        (or flattened into) dimension 0, or absent (a shared input).
        """
        layout = self.layouts[key]
        raw = self.tensor(key)
        if raw.dim() == batched_dims - 1:  # unbatched call, e.g. conv1d on (C, L)
            if layout.kind != "shared":
                raise ProvenanceInputError(
                    f"layer '{self.name}' was called on an unbatched "
                    f"{tuple(raw.shape)} tensor that depends on the input; call it "
                    "on the batch instead"
                )
            t = self.batch_first(key)
            return t.unsqueeze(1)
        if layout.kind == "dim" and layout.dim != 0:
            raise ProvenanceInputError(
                f"layer '{self.name}' ({type(self.module).__name__}) has its "
                f"{key} with the batch at dim {layout.dim}; it must be at dim 0"
            )
        if layout.kind == "flat" and layout.dim != 0:
            raise ProvenanceInputError(
                f"layer '{self.name}' ({type(self.module).__name__}) has its "
                f"{key} with the batch flattened into dim {layout.dim}; it must be "
                "dim 0"
            )
        t = self.batch_first(key)
        if layout.kind == "dim":
            return t.unsqueeze(1)
        return t
