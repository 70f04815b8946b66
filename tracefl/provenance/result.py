"""Result container returned by :class:`~tracefl.provenance.NeuronProvenance`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ProvenanceResult:
    """Per-input client attribution of a global-model prediction.

    Attributes
    ----------
    scores : Tensor
        ``(B, K)`` float64 raw total contributions ``T_k`` (Eq. 6 of the paper).
    probs : Tensor
        ``(B, K)`` float64 ``softmax(scores, dim=1)`` (Eq. 7).
    traced : Tensor
        ``(B,)`` int64 index of the most influential client (``argmax`` of scores).
    client_ids : tuple[str, ...]
        Client identifiers; column ``k`` of ``scores`` belongs to ``client_ids[k]``.
    predicted_labels : Tensor
        ``(B,)`` int64 class predicted by the global model (argmax of its logits).
    targets : Tensor
        ``(B,)`` int64 class whose ``y`` was traced (``predicted_labels`` unless
        ``target=`` was given).
    objective : str
        What ``y`` was: ``"logit"``, ``"log_softmax"`` or ``"margin"``.
    layer_set : str
        Which layer families were traced: ``"all"``, ``"paper"`` or ``"custom"``.
    layer_names : tuple[str, ...]
        Qualified names of the ``L`` traced layers in forward execution order.
    per_layer : Tensor or None
        ``(B, L, K)`` float64 per-layer terms ``beta_l * t_{l,k}`` (already weighted
        by the layer importance and, if enabled, the data share ``p_k``), so that
        ``per_layer.sum(1) == scores``. ``None`` unless requested.
    peak_memory_bytes : int
        CUDA: ``torch.cuda.max_memory_allocated`` during the call. CPU: an estimate,
        see :meth:`NeuronProvenance.attribute`.

    """

    scores: Tensor
    probs: Tensor
    traced: Tensor
    client_ids: tuple[str, ...]
    predicted_labels: Tensor
    targets: Tensor
    objective: str
    layer_set: str
    layer_names: tuple[str, ...]
    per_layer: Tensor | None
    peak_memory_bytes: int

    @property
    def traced_client_ids(self) -> list[str]:
        """Identifier of the traced (most influential) client for every input."""
        return [self.client_ids[i] for i in self.traced.tolist()]
