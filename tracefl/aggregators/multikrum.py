"""MultiKrum: FedAvg over the ``m`` clients with the lowest Krum scores."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy import MultiKrum, Strategy
from flwr.serverapp.strategy.multikrum import select_multikrum
from torch import Tensor

from tracefl.aggregators.base import (
    Aggregator,
    Decomposition,
    floating_keys,
    scalar_shares,
    zero_residual,
)
from tracefl.config import TraceFLConfig

SelectionRule = Callable[[list[RecordDict], int, int], list[RecordDict]]


def selected_clients(
    rule: SelectionRule,
    clients: Sequence[Mapping[str, Tensor]],
    num_malicious_nodes: int,
    num_to_select: int,
) -> list[int]:
    """Indices of the clients Flower's selection ``rule`` picks, in its order.

    Runs Flower's own rule (``select_multikrum``) on the clients rebuilt as the
    replies' records: all entries, in order, in their dtypes, so the distances,
    and therefore the selection, are Flower's bit for bit.
    """
    contents = [
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {k: Array(v.detach().cpu().numpy()) for k, v in client.items()}
                )
            }
        )
        for client in clients
    ]
    position = {id(content): k for k, content in enumerate(contents)}
    chosen = rule(contents, num_malicious_nodes, num_to_select)
    return [position[id(content)] for content in chosen]


class MultiKrumAggregator(Aggregator):
    """Flower ``MultiKrum`` (El Mhamdi et al., 2018).

    Flower scores each client by the summed squared distances to its
    ``max(1, K - f - 2)`` nearest others (over all arrays of the reply), keeps
    the ``m`` lowest scores ``S`` and averages them with FedAvg's weights.

    Shares: ``A_k = n_k / sum_{j in S} n_j`` for ``k in S``, 0 otherwise (0-d,
    every coordinate); ``r = 0``. The selection is re-run with Flower's own
    ``select_multikrum``.

    Precision: float32 (FedAvg's average of the selected clients).
    """

    name = "multikrum"
    keys = ("num-malicious-nodes", "num-nodes-to-select")

    def build(self, cfg: TraceFLConfig, common: Mapping[str, Any]) -> Strategy:
        """Flower ``MultiKrum`` with ``f`` and ``m``."""
        return MultiKrum(
            **common,
            num_malicious_nodes=cfg.num_malicious_nodes,
            num_nodes_to_select=cfg.num_nodes_to_select,
        )

    def _decompose(
        self,
        strategy: Strategy,
        server_round: int,
        before: object | None,
        clients: Sequence[Mapping[str, Tensor]],
        num_examples: Sequence[int],
    ) -> Decomposition:
        if not isinstance(strategy, MultiKrum):
            raise TypeError(
                f"{self.name} needs a Flower MultiKrum, got {type(strategy)}"
            )
        chosen = selected_clients(
            select_multikrum,
            clients,
            strategy.num_malicious_nodes,
            strategy.num_nodes_to_select,
        )
        total = float(sum(num_examples[k] for k in chosen))
        weights = [
            num_examples[k] / total if k in chosen else 0.0 for k in range(len(clients))
        ]
        keys = floating_keys(clients[0])
        return scalar_shares(weights, keys), zero_residual(clients[0], keys)
