"""Why TraceFL cannot run under secure aggregation, in one place.

TraceFL answers "which client made the global model say that?" from the
individual client models of each round. Secure aggregation (Flower's SecAgg+:
``flwr.server.workflow.SecAggPlusWorkflow`` with the client mod
``flwr.client.mod.secaggplus_mod``) exists to hide exactly those: each client
uploads its quantised update plus pairwise and private masks, and the server
learns only the sum. The run-config key ``secure-aggregation`` states the
choice; this module holds the modes and the explanation that both the config
check (before training) and the reply check (a masked reply instead of a
model) give. Flower-free: imported by :mod:`tracefl.config`.
"""

from __future__ import annotations

#: Values of ``secure-aggregation``.
SECURE_AGGREGATION_MODES = ("none", "secaggplus")

#: Name of the ConfigRecord a SecAgg+ client reply carries
#: (``flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS``;
#: a test checks that the two agree).
SECAGGPLUS_RECORD = "secaggplus_configs"

WHY = (
    "TraceFL attributes the global model's predictions to individual clients, so "
    "the server must see every client's model (or update) of a round. Secure "
    "aggregation (Flower's SecAgg+) hides them by design: each client uploads a "
    "masked, quantised update and the server only ever learns their sum, so "
    "per-client provenance is impossible"
)

ALTERNATIVES = (
    "What you can do instead: (1) run without secure aggregation "
    "(secure-aggregation = 'none'); if the concern is what a single model reveals, "
    "differential privacy (clipping-norm, noise-multiplier) keeps the clipped "
    "models visible and TraceFL measures the noise; (2) client-side attribution: "
    "each client scores its own update Delta_k on shared query inputs at the "
    "global model (<d log p/d theta, Delta_k>, tracefl.attribution) and reports "
    "only those scores; (3) run the aggregation and TraceFL inside a trusted "
    "execution environment, so that only attested code sees individual models"
)


def refusal(context: str) -> str:
    """The explanation, prefixed by what triggered it (a key, a reply)."""
    return f"{context}: {WHY}. {ALTERNATIVES}."
