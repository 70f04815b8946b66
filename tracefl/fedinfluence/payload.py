"""What a client sends the server for Fed-Influence in one round.

For every local iteration ``i = 0 .. m-1`` of round ``t`` the client draws a set
``S_{t,i}^k`` of ``S_i = min(N_s, |batch_i|)`` samples of that step's mini-batch
and sends, for every tracked block ``j``, the per-sample gradients
``g(w_{t,i,(j)}^k, z)``, ``z in S_{t,i}^k``, taken at the weights the step
started from (the paper's Eq. 14-15 inputs; Table 1: ``m * N_s * p``
communication). The rows of all iterations are concatenated; ``offsets`` marks
where each iteration's rows start.

Tensor format (:meth:`GradientPayload.to_tensors`, one flat ``str -> Tensor``
dict, so it fits a Flower ``ArrayRecord``):

=====================  =========  ==============  ==================================
key                    dtype      shape           meaning
=====================  =========  ==============  ==================================
``grad.<param>``       float32    ``(S, numel)``  per-sample gradients of ``<param>``
                                                  (flattened in ``param.view(-1)``
                                                  order), ``S = sum_i S_i``
``offsets``            int64      ``(m + 1,)``    rows of iteration ``i`` are
                                                  ``offsets[i]:offsets[i+1]``
``sgd``                float64    ``(4,)``        ``lr, momentum, weight_decay,
                                                  proximal_mu`` (:class:`LocalSGD`)
``seconds``            float64    ``()``          client compute spent sampling
=====================  =========  ==============  ==================================

Size: ``4 * S * p_tracked + 8 * (m + 6)`` bytes (:attr:`GradientPayload.nbytes`).

Transport: Flower's FedAvg and its client-side DP clipping mod require a reply
with exactly one ``ArrayRecord`` (the model), so the payload travels as one
``bytes`` value (:meth:`GradientPayload.to_bytes`: the tensor dict through
``torch.save``, read back with ``torch.load(weights_only=True)``; about 2 KiB of
container overhead per payload) in a ``ConfigRecord``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .settings import LocalSGD

GRAD_PREFIX = "grad."


class PayloadError(ValueError):
    """Raised for a malformed or inconsistent client payload; names the culprit."""


@dataclass(frozen=True)
class GradientPayload:
    """One client's per-sample gradient samples of one round.

    Attributes
    ----------
    grads
        Per tracked parameter name, ``(S, numel)`` float32 gradient rows.
    offsets
        ``(m + 1,)`` int64, ``offsets[0] = 0``, non-decreasing, ``offsets[-1] = S``.
    sgd
        The optimiser the client trained with.
    seconds
        Client wall-clock seconds spent drawing the gradients (extra compute).

    """

    grads: dict[str, Tensor]
    offsets: Tensor
    sgd: LocalSGD
    seconds: float = 0.0

    def __post_init__(self) -> None:
        offsets = self.offsets
        if offsets.dtype != torch.int64 or offsets.dim() != 1 or len(offsets) < 2:
            raise PayloadError(
                "offsets must be a 1-d int64 tensor with m + 1 >= 2 entries, got "
                f"{offsets.dtype} of shape {tuple(offsets.shape)}"
            )
        if int(offsets[0]) != 0 or bool((offsets[1:] <= offsets[:-1]).any()):
            raise PayloadError(
                "offsets must start at 0 and increase (>= 1 sample per iteration)"
            )
        if not self.grads:
            raise PayloadError("grads is empty")
        rows = int(offsets[-1])
        for name, g in self.grads.items():
            if g.dtype != torch.float32 or g.dim() != 2 or g.shape[0] != rows:
                raise PayloadError(
                    f"grads[{name!r}] must be float32 of shape ({rows}, numel), got "
                    f"{g.dtype} {tuple(g.shape)}"
                )
            if not bool(torch.isfinite(g).all()):
                raise PayloadError(f"grads[{name!r}] holds NaN or Inf")

    @property
    def num_iterations(self) -> int:
        """``m``, the number of local iterations sampled."""
        return len(self.offsets) - 1

    @property
    def num_rows(self) -> int:
        """``S``, the number of gradient rows (samples) over all iterations."""
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of :meth:`to_tensors` (what goes over the wire, headers aside)."""
        return sum(t.numel() * t.element_size() for t in self.to_tensors().values())

    def iteration(self, name: str, i: int) -> Tensor:
        """Rows ``(S_i, numel)`` of parameter ``name`` at local iteration ``i``."""
        return self.grads[name][int(self.offsets[i]) : int(self.offsets[i + 1])]

    def to_tensors(self) -> dict[str, Tensor]:
        """The flat tensor dict described in the module docstring."""
        s = self.sgd
        return {
            **{GRAD_PREFIX + n: g for n, g in self.grads.items()},
            "offsets": self.offsets,
            "sgd": torch.tensor(
                [s.lr, s.momentum, s.weight_decay, s.proximal_mu], dtype=torch.float64
            ),
            "seconds": torch.tensor(float(self.seconds), dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor]) -> GradientPayload:
        """Inverse of :meth:`to_tensors` (validates the format)."""
        missing = {"offsets", "sgd", "seconds"} - set(tensors)
        if missing:
            raise PayloadError(f"payload lacks {sorted(missing)}")
        unknown = [
            k
            for k in tensors
            if k not in {"offsets", "sgd", "seconds"} and not k.startswith(GRAD_PREFIX)
        ]
        if unknown:
            raise PayloadError(f"payload has unknown entries {unknown}")
        sgd = tensors["sgd"]
        if sgd.shape != (4,):
            raise PayloadError(f"sgd must have shape (4,), got {tuple(sgd.shape)}")
        lr, momentum, weight_decay, proximal_mu = (float(v) for v in sgd.tolist())
        return cls(
            grads={
                k.removeprefix(GRAD_PREFIX): v
                for k, v in tensors.items()
                if k.startswith(GRAD_PREFIX)
            },
            offsets=tensors["offsets"],
            sgd=LocalSGD(lr, momentum, weight_decay, proximal_mu),
            seconds=float(tensors["seconds"]),
        )

    def to_bytes(self) -> bytes:
        """:meth:`to_tensors` serialised with ``torch.save`` (for a ConfigRecord)."""
        buffer = io.BytesIO()
        torch.save(self.to_tensors(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> GradientPayload:
        """Inverse of :meth:`to_bytes` (loads tensors only, then validates)."""
        tensors = torch.load(io.BytesIO(data), weights_only=True)
        if not isinstance(tensors, dict):
            raise PayloadError(f"payload bytes hold a {type(tensors).__name__}")
        return cls.from_tensors(tensors)

    def check_against(self, shapes: Mapping[str, torch.Size], client_id: str) -> None:
        """Raise unless the payload has exactly the tracked parameters ``shapes``."""
        if set(self.grads) != set(shapes):
            raise PayloadError(
                f"payload of client {client_id!r} has gradients for "
                f"{sorted(self.grads)}, the server tracks {sorted(shapes)}"
            )
        for name, shape in shapes.items():
            if self.grads[name].shape[1] != shape.numel():
                raise PayloadError(
                    f"payload of client {client_id!r}: grads[{name!r}] has "
                    f"{self.grads[name].shape[1]} columns, parameter has "
                    f"{shape.numel()} entries"
                )
