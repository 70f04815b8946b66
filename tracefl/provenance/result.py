"""Result containers returned by :class:`~tracefl.provenance.NeuronProvenance`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class TracedLayer:
    """One traced layer of the coverage report.

    Attributes
    ----------
    name
        Qualified layer name (as in ``ProvenanceResult.layer_names``).
    module_type
        Class name of the module holding it (``"Conv2d"``, ``"MultiheadAttention"``).
    tracer
        Family that traced it (``"Conv"``, ``"Linear"``, ``"Bilinear"``, ...).
    parameters
        Names of the global model's parameters it covers (raw tensors of a
        parametrised weight; the whole fused tensor for a row block of it).
    num_params
        Number of its (effective) parameter elements.
    share
        Its share of the signal, see :class:`CoverageReport`.

    """

    name: str
    module_type: str
    tracer: str
    parameters: tuple[str, ...]
    num_params: int
    share: float


@dataclass(frozen=True)
class UntracedParameter:
    """One parameter of the global model that no traced layer covers.

    Attributes
    ----------
    name
        Qualified parameter name.
    module_type
        Class name of the module that owns it.
    reason
        Why it is not traced.
    num_params
        Number of elements.
    share
        Its share of the signal, see :class:`CoverageReport`.

    """

    name: str
    module_type: str
    reason: str
    num_params: int
    share: float


@dataclass(frozen=True)
class CoverageReport:
    """Which parameters the attribution covers, and how much of the signal.

    The *signal* of a set of parameters ``theta_u`` is ``|<theta_u, dY/d theta_u>|``
    with ``Y = sum_b y_b`` over the attributed inputs and the global model's
    parameters. For a traced layer it is ``|sum_b t_{l, global}[b]|``, its Eq. 5
    term with the global parameters; units are traced layers and untraced
    parameters, and each share is its signal over the sum of all units' signals
    (0 when that sum is 0).

    Attributes
    ----------
    layer_set
        ``"all"``, ``"paper"`` or ``"custom"``.
    traced
        Traced layers that ran, in forward order.
    untraced
        Every parameter not covered by a traced layer that ran, with the reason
        (not in the layer set, not linear in its parameters, never called...).
    untraced_share
        Sum of the untraced parameters' shares.
    untraced_share_by_type
        The same, per owning module type.
    warning_threshold
        The engine warns (``ProvenanceCoverageWarning``) when ``untraced_share``
        exceeds it.

    """

    layer_set: str
    traced: tuple[TracedLayer, ...]
    untraced: tuple[UntracedParameter, ...]
    untraced_share: float
    untraced_share_by_type: dict[str, float]
    warning_threshold: float


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
        Qualified names of the ``L`` traced layers in order of first use in the
        forward pass (a layer used several times is summed over its uses).
    per_layer : Tensor or None
        ``(B, L, K)`` float64 per-layer terms ``beta_l * t_{l,k}`` (already weighted
        by the layer importance and, if enabled, the data share ``p_k``), so that
        ``per_layer.sum(1) == scores``. ``None`` unless requested.
    peak_memory_bytes : int
        CUDA: ``torch.cuda.max_memory_allocated`` during the call. CPU: an estimate,
        see :meth:`NeuronProvenance.attribute`.
    coverage : CoverageReport
        Traced layers and untraced parameters with their shares of the signal.

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
    coverage: CoverageReport

    @property
    def traced_client_ids(self) -> list[str]:
        """Identifier of the traced (most influential) client for every input."""
        return [self.client_ids[i] for i in self.traced.tolist()]
