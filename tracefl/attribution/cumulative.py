"""``cumulative``: cross-round (b), any model against the clients' whole updates.

With the store's cumulative fused updates ``U_k = sum_t A_k^t Delta_k^t`` (see
:mod:`tracefl.attribution.update_store`), for any model ``theta`` (typically the
final ``theta_T``) and input::

    s_k = <g, U_k>,    g = d f(x, target)/d theta at theta

(``f`` = ``log p(target)`` by default; same layer machinery as every other
method). Pseudo-clients ``server`` (``U_server``) and ``noise`` (``U_noise``)
are reported, never traced. Compared with the online cross-round scores, which
take each round's gradient at that round's model, this takes one gradient at
``theta`` for all rounds: it works for inputs chosen after training, and its
memory does not grow with the inputs.

Shapes: ``scores`` ``(B, K_seen + pseudo)``. Cost: ``ceil(K' / clients_per_call)``
engine attributions (one forward + backward each); peak memory about
``clients_per_call`` state dicts beyond the model, read from disk one at a time
when the store keeps them there.
"""

from __future__ import annotations

import dataclasses
import time

from torch import Tensor, nn

from tracefl.provenance.validation import Inputs

from .engine_options import EngineOptions
from .errors import AttributionError
from .result import AttributionResult, join_engine_results
from .update_store import CumulativeUpdates


class CumulativeMethod:
    """``<d f/d theta, U_k>`` for the clients of a :class:`CumulativeUpdates`.

    Parameters
    ----------
    store
        The run's cumulative updates.
    objective, layers, decay, enable_beta, device, chunk_size, client_chunk_size
        See :class:`~tracefl.attribution.engine_options.EngineOptions`.
    include_server
        Also score the ``server``/``noise`` pseudo-clients.
    clients_per_call
        Most parameter sets per engine call (``None``: all in one call). Lower
        it to bound memory when there are many clients.

    """

    name = "cumulative"

    def __init__(
        self,
        store: CumulativeUpdates,
        *,
        objective: str = "log_softmax",
        layers: str = "all",
        decay: float = 0.9,
        enable_beta: bool = False,
        include_server: bool = True,
        clients_per_call: int | None = None,
        device: str | None = None,
        chunk_size: int = 32,
        client_chunk_size: int | None = None,
    ) -> None:
        if not isinstance(store, CumulativeUpdates):
            raise AttributionError(
                f"method 'cumulative' needs a CumulativeUpdates store, got {store!r}"
            )
        if clients_per_call is not None and (
            isinstance(clients_per_call, bool)
            or not isinstance(clients_per_call, int)
            or clients_per_call < 1
        ):
            raise AttributionError(
                "clients_per_call must be None or an int >= 1, got "
                f"{clients_per_call!r}"
            )
        self.store = store
        self.include_server = bool(include_server)
        self.clients_per_call = clients_per_call
        self.options = EngineOptions(
            objective=objective,
            layers=layers,
            decay=decay,
            enable_beta=enable_beta,
            device=device,
            chunk_size=chunk_size,
            client_chunk_size=client_chunk_size,
        )

    def attribute(
        self, model: nn.Module, inputs: Inputs, *, target: int | Tensor | None = None
    ) -> AttributionResult:
        """Scores of every client the store has seen, at ``model``.

        Parameters
        ----------
        model
            Any model with the store's keys and shapes (e.g. the final one).
        inputs
            ``(B, ...)`` tensor or mapping of ``(B, ...)`` tensors.
        target
            ``None`` (the model's prediction), an int or a ``(B,)`` int64 tensor.

        Returns
        -------
        AttributionResult
            ``(B, K_seen + pseudo)`` scores.

        """
        self.store.check_model(model)
        start = time.perf_counter()
        ids = list(self.store.client_ids)
        if self.include_server:
            ids += self.store.pseudo_ids
        step = self.clients_per_call or len(ids)
        parts = []
        for first in range(0, len(ids), step):
            group = ids[first : first + step]
            sets = [self.store.get(cid) for cid in group]
            engine = self.options.engine(model, sets, [1.0] * len(sets), group)
            del sets
            parts.append(engine.attribute(inputs, target=target))
            target = parts[0].targets
        result = join_engine_results(
            self.name,
            parts,
            num_clients=len(self.store.client_ids),
            with_probs=False,
        )
        return dataclasses.replace(result, seconds=time.perf_counter() - start)
