"""``paper``: TraceFL's Eq. 5-7 on one round, for any aggregator.

For each input, with ``y`` the raw logit of the target (default: the predicted
class) and ``c_l = dy/d(output of layer l)`` at the global model ``theta_t``::

    T_k = sum_l beta_l * sum_j c_l[j] * layer_l(z_l; P_k)[j]      (Eq. 5-6)
    probs = softmax_k(T_k)                                         (Eq. 7)

with the parameter set ``P_k``:

* ``scale_by_data_share`` on, FedAvg (``A_k = p_k = n_k / sum(n)``): ``P_k =
  p_k * theta_k``, computed by the same engine call TraceFL always made, so the
  result equals it exactly;
* ``scale_by_data_share`` on, any other aggregator: ``P_k = A_k * theta_k``,
  client ``k``'s share of each parameter;
* ``scale_by_data_share`` off: ``P_k = theta_k`` (the paper's ablation).

The residual ``r`` is reported as the pseudo-client ``server`` (without its DP
noise, which is the pseudo-client ``noise``), scored with the same ``T``. It is
left out of the softmax and the argmax: the question is *which client*, and
``r`` holds what no client sent (server momentum, noise, the kept part of the
previous model). :attr:`AttributionResult.pseudo_would_win` shows the inputs
where it would have outscored every client.

Shapes: ``scores`` ``(B, K + 1)`` (``K + 2`` with DP), ``probs`` ``(B, K)``.
Cost: one engine attribution (one forward + backward over the inputs, ``K``
client sets per traced layer), plus one with the 1-2 pseudo-client sets when
``include_server``.
"""

from __future__ import annotations

from torch import nn

from tracefl.provenance.validation import Inputs

from .engine_options import EngineOptions
from .fused_round import FusedRound
from .result import AttributionResult, join_engine_results
from .round_method import RoundMethod, Target
from .terms import is_data_share, residual_sets


class PaperMethod(RoundMethod):
    """TraceFL's Eq. 5-7 (raw logit, optional ``p_k``/``A_k`` scaling, ``beta``).

    Parameters
    ----------
    scale_by_data_share
        Scale client parameters by their share (run-config
        ``client-weights-normalization``).
    decay, enable_beta
        Layer weights ``beta_l = decay ** (L - 1 - l)``.
    include_server
        Also score the ``server``/``noise`` pseudo-clients (one more engine call).
    layers
        ``"paper"`` (default): the original artifact's layer families (Linear,
        Conv2d, LayerNorm, GPT-2 Conv1D); ``"all"``: every family the engine
        traces.
    device, chunk_size, client_chunk_size
        Passed to the engine.

    """

    name = "paper"

    def __init__(
        self,
        *,
        scale_by_data_share: bool = True,
        decay: float = 0.9,
        enable_beta: bool = True,
        include_server: bool = True,
        layers: str = "paper",
        device: str | None = None,
        chunk_size: int = 32,
        client_chunk_size: int | None = None,
    ) -> None:
        self.scale_by_data_share = bool(scale_by_data_share)
        self.include_server = bool(include_server)
        self.options = EngineOptions(
            objective="logit",
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
        if self.scale_by_data_share and is_data_share(rnd):
            sets, scale = list(rnd.clients), True
        elif self.scale_by_data_share:
            sets, scale = list(rnd.share_weighted(rnd.clients)), False
        else:
            sets, scale = list(rnd.clients), False
        clients = self.options.engine(
            model, sets, rnd.num_examples, rnd.client_ids, scale_by_data_share=scale
        ).attribute(inputs, target=target)
        parts = [clients]
        if self.include_server:
            extra = residual_sets(rnd)
            parts.append(
                self.options.engine(
                    model, list(extra.values()), [1.0] * len(extra), list(extra)
                ).attribute(inputs, target=clients.targets)
            )
        return join_engine_results(
            self.name, parts, num_clients=rnd.num_clients, with_probs=True
        )
