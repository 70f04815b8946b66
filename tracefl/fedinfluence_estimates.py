"""Fed-Influence's FIP estimates of a run, one file per round (for later checks).

With ``fedinfluence-save-estimates = true`` the server writes, after every
round's update, ``<output-dir>/fedinfluence/round-<t>.safetensors``:

* entries ``<client-id>/<state key>``: float64 ``epsilon_t^{-c}`` of every
  client seen so far (the shapes of the model's floating state entries);
* metadata: ``round``, ``client_ids`` (JSON list), ``layers`` (JSON list of the
  tracked modules), ``tracked`` (JSON list of the tracked parameters), ``lwet``
  (``"true"``/``"false"``) and ``truncated`` (JSON: per client, block -> round
  LWET truncated it).

``w_t + epsilon_t^{-c}`` is Fed-Influence's estimate of the round-``t`` global
model of a run without client ``c``; :mod:`tooling.retraining` compares it with
the model actually retrained without ``c``. Size per round: ``8 * C * p``
bytes (``C`` clients seen, ``p`` floating state entries). Files are written
atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from tracefl.attribution import StateDict
from tracefl.fedinfluence import FedInfluence
from tracefl.results_io import atomic_open

ESTIMATES_DIR = "fedinfluence"


def estimates_path(run_dir: Path, server_round: int) -> Path:
    """``<run_dir>/fedinfluence/round-<t>.safetensors`` (three digits)."""
    return Path(run_dir) / ESTIMATES_DIR / _file_name(server_round)


def _file_name(server_round: int) -> str:
    return f"round-{server_round:03d}.safetensors"


@dataclass(frozen=True)
class SavedEstimates:
    """One round's saved FIP estimates (see the module docstring)."""

    server_round: int
    client_ids: tuple[str, ...]
    fip: dict[str, StateDict]
    layers: tuple[str, ...]
    tracked: tuple[str, ...]
    lwet: bool
    truncated: dict[str, dict[str, int]]


def save_estimates(directory: Path, estimator: FedInfluence) -> Path:
    """Write the estimator's current FIP to ``directory`` (its round's file)."""
    fip = estimator.parameter_influence()
    tensors = {
        f"{client}/{key}": value.contiguous()
        for client, state in fip.items()
        for key, value in state.items()
    }
    metadata = {
        "round": str(estimator.server_round),
        "client_ids": json.dumps(list(fip)),
        "layers": json.dumps(list(estimator.settings.layers)),
        "tracked": json.dumps(list(estimator.tracked)),
        "lwet": "true" if estimator.settings.lwet else "false",
        "truncated": json.dumps(estimator.truncated_blocks(), sort_keys=True),
    }
    path = Path(directory) / _file_name(estimator.server_round)
    with atomic_open(path, "wb") as handle:
        handle.write(save_safetensors(tensors, metadata=metadata))
    return path


def load_estimates(run_dir: Path, server_round: int) -> SavedEstimates:
    """Read round ``server_round``'s estimates of the run in ``run_dir``.

    Raises
    ------
    FileNotFoundError
        The run saved no estimates for that round (``fedinfluence-save-estimates``).

    """
    path = estimates_path(run_dir, server_round)
    if not path.is_file():
        raise FileNotFoundError(
            f"no Fed-Influence estimates for round {server_round} in {run_dir} "
            f"({path.name}); run with fedinfluence=true and "
            "fedinfluence-save-estimates=true"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        names = list(handle.keys())
        tensors = {name: handle.get_tensor(name) for name in names}
    clients = tuple(json.loads(metadata["client_ids"]))
    fip: dict[str, StateDict] = {c: {} for c in clients}
    for name, value in tensors.items():
        client, _, key = name.partition("/")
        fip[client][key] = value
    return SavedEstimates(
        server_round=int(metadata["round"]),
        client_ids=clients,
        fip=fip,
        layers=tuple(json.loads(metadata["layers"])),
        tracked=tuple(json.loads(metadata["tracked"])),
        lwet=metadata["lwet"] == "true",
        truncated={
            c: {k: int(r) for k, r in t.items()}
            for c, t in json.loads(metadata["truncated"]).items()
        },
    )
