"""Embeddings: ``o = W[ids]``, linear in the table ``W``.

Client ``k``'s contribution is ``sum_r <c[b, r], W_k[ids[b, r]]>``: only the rows
the inputs look up are gathered from each client's table, never the table.

``nn.Embedding``'s padding row is an ordinary row here (as in Eq. 5 the layer is
re-run with the client's table; PyTorch only freezes that row in training, and it
is zero in practice). ``max_norm`` renormalises looked-up rows, which is not
linear in ``W``: such a module is reported untraced.

``nn.EmbeddingBag`` (``mode`` ``"sum"`` or ``"mean"``, with or without
``offsets``/``per_sample_weights``) is re-run with the gathered rows of each
client; only its output needs a batch layout (bags are the rows of the output).
``mode="max"`` is not linear and is reported untraced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from ..call import ModuleCall
from .base import (
    Contraction,
    LayerSpec,
    LayerTracer,
    ParamView,
    UntraceableError,
    Workspace,
    nbytes,
)


class EmbeddingTracer(LayerTracer):
    """Tracer for ``nn.Embedding`` (ids of any shape and batch layout)."""

    name = "Embedding"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.Embedding)

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """The table, unless ``max_norm`` makes the lookup non-linear."""
        assert isinstance(module, nn.Embedding)
        if module.max_norm is not None:
            raise UntraceableError(
                "max_norm renormalises the looked-up rows: not linear in the table"
            )
        return super().layers(module, qualname)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """The ids and the output."""
        return ("arg0", "out0")

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        ids = call.batch_first("arg0").reshape(call.batch, -1)  # (B, R)
        c = call.rows("out0")  # (B, R, D)
        b, r = ids.shape
        rows, inverse = torch.unique(ids.reshape(-1), return_inverse=True)

        def fn(params: Sequence[Tensor]) -> Tensor:
            table = params[0]  # (K_c, U, D): the looked-up rows of each client
            looked_up = table[:, inverse]  # (K_c, B*R, D)
            out = torch.einsum("kbrd,brd->bk", looked_up.view(-1, b, r, c.shape[2]), c)
            return out

        temp = num_clients * b * r * c.shape[2] * c.element_size()
        yield Contraction(0, (ParamView(layers[0].params[0], rows),), fn, temp)


class EmbeddingBagTracer(LayerTracer):
    """Tracer for ``nn.EmbeddingBag`` in ``"sum"`` and ``"mean"`` modes."""

    name = "EmbeddingBag"

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        return isinstance(module, nn.EmbeddingBag)

    def layers(self, module: nn.Module, qualname: str) -> tuple[LayerSpec, ...]:
        """The table, unless the bag reduction is not linear."""
        assert isinstance(module, nn.EmbeddingBag)
        if module.mode == "max":
            raise UntraceableError("mode='max' is not linear in the table")
        if module.max_norm is not None:
            raise UntraceableError(
                "max_norm renormalises the looked-up rows: not linear in the table"
            )
        return super().layers(module, qualname)

    def layout_keys(self, call: ModuleCall) -> tuple[str, ...]:
        """Only the output: bags are its rows, the flat ids need no layout."""
        return ("out0",)

    def contractions(
        self,
        call: ModuleCall,
        layers: tuple[LayerSpec, ...],
        num_clients: int,
        workspace: Workspace,
    ) -> Iterator[Contraction]:
        """One contraction per call; see :meth:`LayerTracer.contractions`."""
        module = call.module
        assert isinstance(module, nn.EmbeddingBag)
        names = ("input", "offsets", "per_sample_weights")
        given = dict(zip(names, call.args, strict=False))
        given.update({k: v for k, v in call.kwargs.items() if k in names})
        ids = given["input"]
        rows, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        inverse = inverse.reshape(ids.shape)
        padding = None
        if module.padding_idx is not None:
            hits = (rows == module.padding_idx).nonzero()
            padding = int(hits[0, 0]) if hits.numel() else None
        c = call.rows("out0")  # (B, R, D)
        layout = call.layouts["out0"]

        def fn(params: Sequence[Tensor]) -> Tensor:
            table = params[0]  # (K_c, U, D)
            outs = []
            for client_rows in table:
                bags = nnf.embedding_bag(
                    inverse,
                    client_rows,
                    given.get("offsets"),
                    mode=module.mode,
                    per_sample_weights=given.get("per_sample_weights"),
                    include_last_offset=module.include_last_offset,
                    padding_idx=padding,
                )
                bags = layout.to_batch_first(bags, call.batch)
                outs.append((bags.reshape(c.shape) * c).sum((1, 2)))
            return torch.stack(outs, dim=1)

        temp = nbytes(c) * 2
        yield Contraction(0, (ParamView(layers[0].params[0], rows),), fn, temp)
