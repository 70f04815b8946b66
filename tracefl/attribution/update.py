"""``update``: one round, objective ``log p(target)``, share on the *update*.

For each input, with ``f`` the objective (default ``log_softmax``: ``log
p(target | x; theta)``; ``margin``: target logit minus the largest other) and
its gradient ``g = df/dtheta`` at the global model ``theta_t``::

    s_k = <g, A_k * Delta_k>,    Delta_k = theta_k - theta_{t-1}

where ``<., .>`` runs over the parameters of the traced layers (``layers="all"``:
every family the engine traces; ``"paper"``: the paper's four), with the
``beta_l`` layer weights off by default. Why: ``sum_k s_k + s_server`` is the
first-order change of ``f`` over the round, ``<g, theta_t - theta_{t-1}>``
(on those parameters), so each client gets its part of what the round did to
the prediction. The
paper's ``p_k * <g, theta_k>`` contains ``p_k * <g, theta_{t-1}>`` (about
``L * y`` for ReLU nets), a term every client shares that favours the largest.

Pseudo-clients: ``server`` is the residual update ``theta_t - theta_{t-1} -
sum_k A_k Delta_k`` without DP noise, ``noise`` the noise; both reported, never
traced. No softmax (``probs`` is ``None``): the scores are log-probability
changes, not logits of a distribution over clients.

Shapes: ``scores`` ``(B, K + 1)`` (``K + 2`` with DP). Cost: one engine
attribution with ``K + 1`` (``K + 2``) parameter sets.
"""

from __future__ import annotations

from torch import nn

from tracefl.provenance.validation import Inputs

from .engine_options import EngineOptions
from .fused_round import FusedRound
from .result import AttributionResult, join_engine_results
from .round_method import RoundMethod, Target
from .terms import client_fused_update, residual_update_sets, sum_states


class UpdateMethod(RoundMethod):
    """Per-round ``<d log p(target)/d theta, A_k * Delta_k>``.

    Parameters
    ----------
    objective, layers, decay, enable_beta, device, chunk_size, client_chunk_size
        See :class:`~tracefl.attribution.engine_options.EngineOptions`.
    include_server
        Also score the ``server``/``noise`` pseudo-clients (same engine call).

    """

    name = "update"

    def __init__(
        self,
        *,
        objective: str = "log_softmax",
        layers: str = "all",
        decay: float = 0.9,
        enable_beta: bool = False,
        include_server: bool = True,
        device: str | None = None,
        chunk_size: int = 32,
        client_chunk_size: int | None = None,
    ) -> None:
        self.include_server = bool(include_server)
        self.options = EngineOptions(
            objective=objective,
            layers=layers,
            decay=decay,
            enable_beta=enable_beta,
            device=device,
            chunk_size=chunk_size,
            client_chunk_size=client_chunk_size,
        )

    def _attribute(
        self, rnd: FusedRound, model: nn.Module, inputs: Inputs, target: Target
    ) -> AttributionResult:
        sets = [client_fused_update(rnd, k) for k in range(rnd.num_clients)]
        ids = list(rnd.client_ids)
        weights = [float(n) for n in rnd.num_examples]
        if self.include_server:
            extra = residual_update_sets(rnd, sum_states(sets))
            sets += extra.values()
            ids += extra
            weights += [1.0] * len(extra)
        out = self.options.engine(model, sets, weights, ids).attribute(
            inputs, target=target
        )
        return join_engine_results(
            self.name, [out], num_clients=rnd.num_clients, with_probs=False
        )
