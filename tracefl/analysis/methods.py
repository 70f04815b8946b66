"""The run's attribution methods, built once and fed every round.

Per-round methods (``paper``, ``update``, ``loo``) need nothing across rounds;
cross-round methods read a :class:`~tracefl.attribution.CrossRoundOnline`
accumulator over the fixed query inputs, and ``cumulative`` a
:class:`~tracefl.attribution.CumulativeUpdates` store, which must see every
round that produced an aggregate, traced or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tracefl.analysis.queries import query_indices, query_targets
from tracefl.attribution import (
    AttributionResult,
    CrossRoundOnline,
    CumulativeMethod,
    CumulativeUpdates,
    FusedRound,
    RoundMethod,
    create_round_method,
    method_spec,
)
from tracefl.config import CROSS_ROUND_METHODS, TraceFLConfig
from tracefl.dataset import LabeledTensors

#: The method whose answer the headline columns report (the paper's).
PAPER = "paper"


class MethodSuite:
    """Every enabled method of a run, with the state the cross-round ones keep.

    Parameters
    ----------
    cfg
        The run's configuration (``methods`` and the engine options).
    test_data
        The server's test split (the query inputs come from it).
    device
        Where the methods compute.
    store_dir
        Where the cumulative store spills beyond its RAM budget.

    """

    def __init__(
        self,
        cfg: TraceFLConfig,
        test_data: LabeledTensors,
        device: torch.device,
        store_dir: Path,
    ) -> None:
        self.names = cfg.method_names
        engine = {
            "device": str(device),
            "chunk_size": cfg.provenance_chunk_size,
            "client_chunk_size": cfg.provenance_client_chunk_size or None,
        }
        with_server = cfg.residual_expected
        self.round_methods: dict[str, RoundMethod] = {}
        for name in self.names:
            if method_spec(name).state is None:
                options: dict[str, Any] = dict(engine)
                if name == "loo":  # forward passes only: no engine, no client sets
                    del options["client_chunk_size"]
                if name == PAPER:
                    options.update(
                        scale_by_data_share=cfg.client_weights_normalization,
                        decay=cfg.beta_decay,
                        enable_beta=cfg.enable_beta,
                        layers=cfg.provenance_layers,
                        include_server=with_server,
                    )
                elif name == "update":
                    options["include_server"] = with_server
                self.round_methods[name] = create_round_method(name, **options)
        self.queries: np.ndarray | None = None
        self.online: CrossRoundOnline | None = None
        if cfg.uses_query_set:
            self.queries = query_indices(cfg, test_data.labels)
            self.online = CrossRoundOnline(
                test_data.select_features(torch.as_tensor(self.queries)),
                query_targets(cfg, test_data.labels, self.queries),
                include_server=with_server,
                **engine,
            )
        self.store_dir = store_dir
        self.store: CumulativeUpdates | None = None
        self.cumulative: CumulativeMethod | None = None
        if "cumulative" in self.names:
            self.store = CumulativeUpdates(
                ram_budget_bytes=int(cfg.cumulative_ram_budget_mb * 2**20),
                directory=store_dir,
            )
            self.cumulative = CumulativeMethod(
                self.store, include_server=with_server, **engine
            )

    def save(self) -> Path | None:
        """Write the cumulative store (``U_k`` per client) for use after training.

        ``theta_T = theta_0 + sum_k U_k + server + noise`` holds for the final
        model; ``tracefl.attribution.CumulativeUpdates.load`` reads it back.
        """
        if self.store is None or not self.store.rounds:
            return None
        return self.store.save(self.store_dir)

    def observe(self, fused: FusedRound, model: nn.Module) -> None:
        """Feed the cross-round state with a round that produced an aggregate."""
        if self.online is not None:
            self.online.observe(fused, model)
        if self.store is not None:
            self.store.add(fused)

    def attribute(
        self,
        fused: FusedRound,
        model: nn.Module,
        indices: np.ndarray,
        inputs: torch.Tensor | dict[str, torch.Tensor],
    ) -> dict[str, AttributionResult]:
        """Every method's result on the test inputs ``indices`` (in that order)."""
        results: dict[str, AttributionResult] = {}
        for name in self.names:
            if name in self.round_methods:
                results[name] = self.round_methods[name].attribute(fused, model, inputs)
            elif name in CROSS_ROUND_METHODS:
                assert self.online is not None and self.queries is not None
                rows = torch.as_tensor(np.searchsorted(self.queries, indices))
                whole = self.online.result(fusion_weighted=name == "cross-round")
                results[name] = whole.take(rows)
            else:
                assert self.cumulative is not None
                results[name] = self.cumulative.attribute(model, inputs)
        return results
