"""Fed-Influence (Xue et al., AAAI): the influence of removing a client (Flower-free).

The influence of client ``c`` on the parameters (FIP, Eq. 5) is the change of the
global model had ``c`` never taken part; it is estimated round by round (Eq.
10-11) with layer-wise examination and truncation (LWET, Eq. 13) and a Fisher
approximation of the Hessian evaluated by a linear-cost recursion (Eq. 15). From
FIP follows the influence on each prediction's loss and logit (FIL, Eq. 6).

Flow per round ``t``:

1. server, before training: :func:`check_settings` (layers exist, memory
   budget);
2. each participating client: ``train(..., on_step=GradientSampler(...))``
   draws ``N_s`` per-sample gradients per local step; the client sends
   ``sampler.payload().to_bytes()`` with its model;
3. server, after aggregation: ``FedInfluence.update(fused_round, payloads)``
   with the round's :class:`~tracefl.attribution.FusedRound` and
   ``GradientPayload.from_bytes(...)`` per participant;
4. any time: :meth:`FedInfluence.parameter_influence` (FIP),
   :meth:`FedInfluence.influence_on_loss` (FIL per input and on the set).

:func:`counterfactual_effects` also computes the retraining ground truth from
the global models of runs without each client.

Modules: :mod:`.settings` (what is tracked, the local optimiser),
:mod:`.sampler` (client), :mod:`.payload` (wire format), :mod:`.recursion`
(Eq. 15), :mod:`.estimator` (Eq. 10-13, server state), :mod:`.effects` (FIL,
ground truth), :mod:`.cost` (memory, bytes, flops).
"""

from .cost import CostEstimate, check_settings, estimate_cost, local_iterations
from .effects import PredictionEffect, counterfactual_effects
from .estimator import (
    FedInfluence,
    FedInfluenceDivergedError,
    RoundReport,
    removal_weights,
    scalar_shares,
)
from .payload import GradientPayload, PayloadError
from .recursion import propagate
from .sampler import GradientSampler, per_sample_gradients
from .settings import (
    FedInfluenceConfigError,
    FedInfluenceSettings,
    LocalSGD,
    default_layers,
    tracked_parameters,
)

__all__ = [
    "CostEstimate",
    "FedInfluence",
    "FedInfluenceConfigError",
    "FedInfluenceDivergedError",
    "FedInfluenceSettings",
    "GradientPayload",
    "GradientSampler",
    "LocalSGD",
    "PayloadError",
    "PredictionEffect",
    "RoundReport",
    "check_settings",
    "counterfactual_effects",
    "default_layers",
    "estimate_cost",
    "local_iterations",
    "per_sample_gradients",
    "propagate",
    "removal_weights",
    "scalar_shares",
    "tracked_parameters",
]
