"""Saved models of a run: the final global model and chosen rounds (Flower-free).

A run that keeps models writes them under ``<output-dir>/models/``::

    models/
      manifest.json                     what is stored, sizes, SHA-256, budget
      final/global.safetensors          final global model (``keep-final-model``)
      round-003/previous.safetensors    theta_{t-1}: the model the clients started from
      round-003/global.safetensors      theta_t: the round's aggregate
      round-003/client-0.safetensors    theta_k as fused, one file per participant
      round-003/fusion.safetensors      shares A_k ("share/<k>/<key>") and DP noise

Every round directory holds the terms of a
:class:`~tracefl.attribution.FusedRound` (``theta_t = sum_k A_k theta_k + r``);
the residual ``r`` is not stored but recomputed from (1) when a round is
loaded, so :meth:`ModelStore.load_round` returns the round as it was fused.
Files are safetensors (no pickle), written atomically; the manifest is
rewritten after every file, so an interrupted run leaves a consistent store.

The number of files and bytes is bounded by a budget (``keep-models-max-files``,
``keep-models-max-mb``) that :meth:`ModelStore.check_budget` compares with the
worst case *before* training; a round that would still exceed it is skipped
and recorded as such in the manifest (never silently).

Loading (:func:`load_state_file`) accepts safetensors and PyTorch state dicts;
the latter are read with ``torch.load(weights_only=True)``, so nothing is
unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor, nn

from tracefl.attribution.fused_round import FusedRound, StateDict, floating_entries
from tracefl.config import ConfigError, TraceFLConfig
from tracefl.results_io import atomic_open, write_json

FORMAT = "tracefl-model-store"
VERSION = 1
MANIFEST = "manifest.json"
MODELS_DIR = "models"
#: Suffixes read as PyTorch files (``torch.load(weights_only=True)``).
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class ModelStoreError(ValueError):
    """A saved-model file or store is missing, unsafe, truncated or mismatched."""


# ----------------------------------------------------------------- state files


def load_state_file(path: Path) -> StateDict:
    """Read a state dict from a ``.safetensors`` or PyTorch (``.pt``) file.

    PyTorch files are loaded with ``torch.load(weights_only=True)``: a file
    that needs arbitrary unpickling (a whole pickled module, custom classes)
    is refused. A file holding ``{"state_dict": {...}}`` or
    ``{"model_state_dict": {...}}`` (common checkpoint layouts) is unwrapped.

    Raises
    ------
    ModelStoreError
        Missing, empty, truncated or unsafe file, or one that holds no tensors.

    """
    path = Path(path)
    if not path.is_file():
        raise ModelStoreError(f"model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelStoreError(f"model file {path} is empty")
    if path.suffix == ".safetensors":
        try:
            state = load_safetensors_bytes(path.read_bytes())
        except (SafetensorError, ValueError) as err:
            raise ModelStoreError(
                f"model file {path} is not a readable safetensors file "
                f"(truncated or corrupt?): {err}"
            ) from err
    elif path.suffix in TORCH_SUFFIXES:
        state = _load_torch_state(path)
    else:
        raise ModelStoreError(
            f"model file {path}: unknown format '{path.suffix}'; use .safetensors "
            f"or a PyTorch state dict ({', '.join(TORCH_SUFFIXES)})"
        )
    if not state:
        raise ModelStoreError(f"model file {path} holds no tensors")
    return state


def _load_torch_state(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError
        text = str(err)
        if "Weights only load failed" in text or "weights_only" in text:
            raise ModelStoreError(
                f"model file {path} needs unsafe unpickling (it holds more than "
                "tensors, e.g. a whole pickled module or custom classes) and is "
                "refused. Save a state dict instead: "
                "torch.save(model.state_dict(), path), or use safetensors."
            ) from err
        raise ModelStoreError(
            f"model file {path} is not a readable PyTorch file (truncated or "
            f"corrupt?): {type(err).__name__}: {text.splitlines()[0] if text else ''}"
        ) from err
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ModelStoreError(
            f"model file {path} holds a {type(obj).__name__}, not a state dict"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelStoreError(
            f"model file {path} is not a flat state dict: entry '{bad[0]}' is not "
            "a tensor"
        )
    return {str(k): v for k, v in obj.items()}


def check_state(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], owner: str
) -> None:
    """Raise unless ``state`` has the keys and shapes of ``expected``.

    Every floating-point entry of ``expected`` (a model's state dict) must be
    present with its shape; integer buffers (BatchNorm's
    ``num_batches_tracked``) may be absent, since a :class:`FusedRound` keeps
    floating entries only.

    Raises
    ------
    ModelStoreError
        Missing or unexpected key, or a shape mismatch (named, with ``owner``).

    """
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelStoreError(
            f"{owner} does not match the architecture: unexpected key "
            f"'{unexpected[0]}' ({len(unexpected)} unexpected in all)"
        )
    for key, ref in expected.items():
        if key not in state:
            if ref.is_floating_point():
                raise ModelStoreError(
                    f"{owner} does not match the architecture: missing key '{key}'"
                )
            continue
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ModelStoreError(
                f"{owner} does not match the architecture: '{key}' has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(ref.shape)}"
            )


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], owner: str) -> None:
    """Load ``state`` into ``model`` after :func:`check_state` (keys, shapes).

    Raises
    ------
    ModelStoreError
        Missing or unexpected key, or a shape mismatch (named, with ``owner``).

    """
    check_state(model.state_dict(), state, owner)
    model.load_state_dict(dict(state), strict=False)


def state_nbytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of the floating-point entries (what a saved round keeps per model)."""
    return _data_bytes(floating_entries(state))


def _data_bytes(state: Mapping[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# ---------------------------------------------------------------------- policy


@dataclass(frozen=True)
class KeepModelsPolicy:
    """What a run keeps and the budget bounding it.

    Attributes
    ----------
    rounds
        Rounds whose participants are saved; ``None`` for every round.
    final
        Save the final global model.
    max_files, max_bytes
        Upper bounds on the files and bytes the store may write.

    """

    rounds: frozenset[int] | None = frozenset()
    final: bool = False
    max_files: int = 1000
    max_bytes: int = 2048 * 2**20

    @classmethod
    def from_config(cls, cfg: TraceFLConfig) -> KeepModelsPolicy:
        """The policy of a run config's ``keep-*`` keys."""
        rounds = cfg.keep_models_round_set()
        return cls(
            rounds=None if rounds is None else frozenset(rounds),
            final=cfg.keep_final_model,
            max_files=cfg.keep_models_max_files,
            max_bytes=int(cfg.keep_models_max_mb * 2**20),
        )

    @property
    def keeps_anything(self) -> bool:
        """Whether any model is saved at all."""
        return self.final or self.rounds is None or bool(self.rounds)

    def wants_round(self, server_round: int) -> bool:
        """Whether ``server_round``'s models are saved."""
        return self.rounds is None or server_round in self.rounds


def files_per_round(num_clients: int) -> int:
    """Files one saved round writes: previous, global, fusion, one per client."""
    return num_clients + 3


# ----------------------------------------------------------------------- store


class ModelStore:
    """Saved models of one run under ``root`` (normally ``<output-dir>/models``).

    Parameters
    ----------
    root
        The store directory; created on the first save.
    policy
        What to keep (default: nothing; use :meth:`open` to read a store).
    architecture
        Run-config keys that rebuild the model (``dataset``, ``model``,
        ``image-size``, ``max-seq-len``), recorded in the manifest so a store
        can be explained without its ``run.json``.

    """

    def __init__(
        self,
        root: Path,
        policy: KeepModelsPolicy | None = None,
        architecture: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.policy = policy or KeepModelsPolicy()
        if (self.root / MANIFEST).is_file():
            self._manifest = read_manifest(self.root)
        else:
            self._manifest = {
                "format": FORMAT,
                "version": VERSION,
                "architecture": dict(architecture or {}),
                "budget": {},
                "rounds": {},
                "skipped_rounds": {},
                "final": None,
            }
        self._manifest["budget"] = {
            "max_files": self.policy.max_files,
            "max_bytes": self.policy.max_bytes,
        }

    # ---------------------------------------------------------- construction
    @classmethod
    def for_run(
        cls,
        cfg: TraceFLConfig,
        output_dir: Path,
        model_state: Mapping[str, Tensor],
        clients_per_round: int,
    ) -> ModelStore:
        """The store of a new run, budget checked: call once before training.

        ``<output_dir>/models`` with the policy of the config's ``keep-*``
        keys. Models a previous run left there (the files its manifest lists)
        are removed, so the store only ever describes this run. Nothing is
        written until something is saved.

        Raises
        ------
        ConfigError
            The policy could exceed ``keep-models-max-files``/``-max-mb``.

        """
        architecture = {
            "dataset": cfg.dataset,
            "model": cfg.model,
            "image-size": cfg.image_size,
            "max-seq-len": cfg.max_seq_len,
        }
        root = Path(output_dir) / MODELS_DIR
        if (root / MANIFEST).is_file():
            _remove_listed_files(root)
        store = cls(root, KeepModelsPolicy.from_config(cfg), architecture)
        store.check_budget(
            model_state,
            clients_per_round,
            cfg.num_server_rounds,
            with_noise=cfg.dp_enabled,
        )
        return store

    @classmethod
    def open(cls, root: Path) -> ModelStore:
        """Open an existing store for reading (``root`` or ``<run-dir>/models``).

        Raises
        ------
        ModelStoreError
            No manifest there.

        """
        root = Path(root)
        if not (root / MANIFEST).is_file() and (root / MODELS_DIR / MANIFEST).is_file():
            root = root / MODELS_DIR
        if not (root / MANIFEST).is_file():
            raise ModelStoreError(
                f"no saved models in {root} (no {MANIFEST}); run with "
                "keep-models-rounds='all' (or e.g. '1,3') and/or "
                "keep-final-model=true to keep models"
            )
        return cls(root)

    # ----------------------------------------------------------------- budget
    def check_budget(
        self,
        model_state: Mapping[str, Tensor],
        clients_per_round: int,
        num_rounds: int,
        *,
        with_noise: bool = False,
    ) -> None:
        """Raise before training if the policy could exceed the budget.

        Parameters
        ----------
        model_state
            The run's (initial) model state dict: gives the size of one model.
        clients_per_round
            Most participants a round can have (the sampled clients).
        num_rounds
            ``num-server-rounds``.
        with_noise
            DP is on: a saved round also stores its noise (one model's size).

        Raises
        ------
        ConfigError
            Naming ``keep-models-max-files`` or ``keep-models-max-mb``, the
            value and what the policy needs.

        """
        files, nbytes = self.worst_case(
            model_state, clients_per_round, num_rounds, with_noise=with_noise
        )
        policy = self.policy
        what = self._describe(clients_per_round, num_rounds)
        if files > policy.max_files:
            raise ConfigError(
                f"Invalid 'keep-models-max-files' = {policy.max_files}: keeping "
                f"models as configured writes up to {files} files ({what}); raise "
                "it or keep fewer rounds (keep-models-rounds)."
            )
        if nbytes > policy.max_bytes:
            per_model = state_nbytes(model_state) / 2**20
            raise ConfigError(
                f"Invalid 'keep-models-max-mb' = {policy.max_bytes / 2**20:g}: "
                f"keeping models as configured writes up to "
                f"{math.ceil(nbytes / 2**20)} MB ({what}, {per_model:.2f} MB per "
                "model); raise it or keep fewer rounds (keep-models-rounds)."
            )

    def worst_case(
        self,
        model_state: Mapping[str, Tensor],
        clients_per_round: int,
        num_rounds: int,
        *,
        with_noise: bool = False,
    ) -> tuple[int, int]:
        """``(files, tensor bytes)`` the policy writes at most.

        Counts the manifest as a file; bytes are tensor data (file headers
        aside). Shares are counted as per-client scalars (FedAvg/FedProx);
        an aggregator with full-shape shares is caught when a round is saved.
        """
        model_bytes = state_nbytes(model_state)
        share_bytes = len(floating_entries(model_state)) * 8 * clients_per_round
        rounds = self._kept_round_count(num_rounds)
        models = clients_per_round + 2 + (1 if with_noise else 0)
        files = 1 + rounds * files_per_round(clients_per_round)
        nbytes = rounds * (models * model_bytes + share_bytes)
        if self.policy.final:
            files += 1
            nbytes += _data_bytes(model_state)
        return files, nbytes

    def _kept_round_count(self, num_rounds: int) -> int:
        rounds = self.policy.rounds
        if rounds is None:
            return num_rounds
        return sum(1 for r in rounds if 1 <= r <= num_rounds)

    def _describe(self, clients: int, num_rounds: int) -> str:
        rounds = self._kept_round_count(num_rounds)
        text = f"{rounds} round(s) x ({clients} clients + 3 files)"
        return text + (" + the final model" if self.policy.final else "")

    def _used(self) -> tuple[int, int]:
        """``(files, tensor bytes)`` written so far (manifest included)."""
        entries = list(self._file_entries())
        return len(entries) + 1, sum(int(e["data_bytes"]) for e in entries)

    def _file_entries(self) -> Iterable[Mapping[str, Any]]:
        for entry in self._manifest["rounds"].values():
            yield from entry["files"].values()
        if self._manifest["final"]:
            yield self._manifest["final"]

    # ------------------------------------------------------------------ write
    def wants_round(self, server_round: int) -> bool:
        """Whether the policy keeps ``server_round``'s models."""
        return self.policy.wants_round(server_round)

    def save_round(self, fused: FusedRound) -> bool:
        """Save one round's models if the policy keeps that round.

        Returns
        -------
        bool
            True if saved; False if the policy does not keep the round, or the
            budget would be exceeded (then recorded under ``skipped_rounds``
            in the manifest).

        """
        r = fused.server_round
        if not self.wants_round(r):
            return False
        tensors: dict[str, tuple[StateDict, dict[str, str]]] = {
            "previous": (fused.previous, {"role": "previous"}),
            "global": (fused.aggregate, {"role": "global"}),
        }
        for k, (cid, state) in enumerate(
            zip(fused.client_ids, fused.clients, strict=True)
        ):
            tensors[f"client-{k}"] = (
                state,
                {
                    "role": "client",
                    "client_id": cid,
                    "num_examples": str(fused.num_examples[k]),
                },
            )
        fusion: StateDict = {
            f"share/{k}/{key}": share
            for k, shares in enumerate(fused.shares)
            for key, share in shares.items()
        }
        if fused.noise is not None:
            fusion.update({f"noise/{key}": t for key, t in fused.noise.items()})
        tensors["fusion"] = (fusion, {"role": "fusion"})

        needed_files = len(tensors)
        needed_bytes = sum(_data_bytes(s) for s, _ in tensors.values())
        used_files, used_bytes = self._used()
        if (
            used_files + needed_files > self.policy.max_files
            or used_bytes + needed_bytes > self.policy.max_bytes
        ):
            self._manifest["skipped_rounds"][str(r)] = (
                f"budget: {needed_files} files / {needed_bytes} bytes would exceed "
                f"max_files={self.policy.max_files} / "
                f"max_bytes={self.policy.max_bytes}"
            )
            self._write_manifest()
            return False

        folder = f"round-{r:03d}"
        files: dict[str, dict[str, Any]] = {}
        for name, (state, meta) in tensors.items():
            rel = f"{folder}/{name}.safetensors"
            files[name] = self._write(rel, state, {**meta, "round": str(r)})
        self._manifest["rounds"][str(r)] = {
            "round": r,
            "aggregator": fused.aggregator,
            "client_ids": list(fused.client_ids),
            "num_examples": list(fused.num_examples),
            "has_noise": fused.noise is not None,
            "files": files,
        }
        self._manifest["skipped_rounds"].pop(str(r), None)
        self._write_manifest()
        return True

    def save_final(
        self, state: Mapping[str, Tensor], server_round: int | None = None
    ) -> bool:
        """Save the final global model (full state dict) if the policy keeps it.

        Returns True if saved. Not bounded by the budget beyond the check in
        :meth:`check_budget` (it is one model, and the one users want most).
        """
        if not self.policy.final:
            return False
        meta = {"role": "final"}
        if server_round is not None:
            meta["round"] = str(server_round)
        entry = self._write("final/global.safetensors", dict(state), meta)
        self._manifest["final"] = {**entry, "round": server_round}
        self._write_manifest()
        return True

    def _write(
        self, rel: str, state: Mapping[str, Tensor], metadata: Mapping[str, str]
    ) -> dict[str, Any]:
        tensors = {
            key: t.detach().to("cpu").contiguous().clone() for key, t in state.items()
        }
        data = save_safetensors_bytes(tensors, metadata=dict(metadata))
        path = self.root / rel
        with atomic_open(path, "wb") as handle:
            handle.write(data)
        return {
            "path": rel,
            "bytes": len(data),
            "data_bytes": _data_bytes(tensors),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def _write_manifest(self) -> None:
        write_json(self.root / MANIFEST, self._manifest)

    # ------------------------------------------------------------------- read
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest (a copy): architecture, budget, rounds, final model."""
        return json.loads(json.dumps(self._manifest))

    @property
    def architecture(self) -> dict[str, Any]:
        """Run-config keys that rebuild the model (may be empty)."""
        return dict(self._manifest.get("architecture") or {})

    def rounds(self) -> list[int]:
        """Saved rounds, ascending."""
        return sorted(int(r) for r in self._manifest["rounds"])

    def load_round(self, server_round: int) -> FusedRound:
        """The saved round as a :class:`FusedRound` (tensors on the CPU).

        The residual is recomputed as ``theta_t - sum_k A_k theta_k`` (the
        definition of (1)); it includes the DP noise when there was any.

        Raises
        ------
        ModelStoreError
            Round not saved (the message lists the saved ones) or a file
            missing, truncated or different from what the manifest recorded.

        """
        entry = self._manifest["rounds"].get(str(server_round))
        if entry is None:
            skipped = self._manifest.get("skipped_rounds", {}).get(str(server_round))
            why = f" (skipped: {skipped})" if skipped else ""
            raise ModelStoreError(
                f"round {server_round} is not saved in {self.root}{why}; saved "
                f"rounds: {self.rounds() or 'none'}"
            )
        files = entry["files"]
        previous = self._read(files["previous"])
        aggregate = self._read(files["global"])
        ids = tuple(entry["client_ids"])
        clients = tuple(self._read(files[f"client-{k}"]) for k in range(len(ids)))
        fusion = self._read(files["fusion"])
        shares = tuple(
            {key: fusion[f"share/{k}/{key}"] for key in previous}
            for k in range(len(ids))
        )
        noise = (
            {key: fusion[f"noise/{key}"] for key in previous}
            if entry["has_noise"]
            else None
        )
        residual = {
            key: aggregate[key].double()
            - sum(
                s[key].double() * c[key].double()
                for s, c in zip(shares, clients, strict=True)
            )
            for key in previous
        }
        try:
            return FusedRound(
                server_round=int(entry["round"]),
                aggregator=str(entry["aggregator"]),
                client_ids=ids,
                num_examples=tuple(int(n) for n in entry["num_examples"]),
                previous=previous,
                clients=clients,
                aggregate=aggregate,
                shares=shares,
                residual=residual,
                noise=noise,
            )
        except (KeyError, ValueError) as err:
            raise ModelStoreError(
                f"round {server_round} in {self.root} is inconsistent: {err}"
            ) from err

    def load_final(self) -> StateDict:
        """The final global model's state dict.

        Raises
        ------
        ModelStoreError
            The run did not keep it, or the file is missing/corrupt.

        """
        entry = self._manifest.get("final")
        if not entry:
            raise ModelStoreError(
                f"no final model saved in {self.root} (run with keep-final-model=true)"
            )
        return self._read(entry)

    def _read(self, entry: Mapping[str, Any]) -> StateDict:
        path = self.root / entry["path"]
        if not path.is_file():
            raise ModelStoreError(f"saved model {path} is missing")
        data = path.read_bytes()
        if len(data) != int(entry["bytes"]):
            raise ModelStoreError(
                f"saved model {path} has {len(data)} bytes but the manifest recorded "
                f"{entry['bytes']} (truncated or overwritten?)"
            )
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ModelStoreError(
                f"saved model {path} does not match the SHA-256 in the manifest "
                "(corrupt or replaced)"
            )
        try:
            return load_safetensors_bytes(data)
        except (SafetensorError, ValueError) as err:
            raise ModelStoreError(f"saved model {path} is unreadable: {err}") from err


def read_manifest(root: Path) -> dict[str, Any]:
    """Read and check ``root/manifest.json``.

    Raises
    ------
    ModelStoreError
        Not a TraceFL model store, or a newer format version.

    """
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelStoreError(f"cannot read {path}: {err}") from err
    if manifest.get("format") != FORMAT:
        raise ModelStoreError(f"{path} is not a TraceFL model-store manifest")
    if int(manifest.get("version", 0)) > VERSION:
        raise ModelStoreError(
            f"{path} has format version {manifest['version']}; this TraceFL reads "
            f"up to {VERSION}"
        )
    return manifest


def _remove_listed_files(root: Path) -> None:
    """Delete the model files (and the manifest) an old manifest lists.

    Only files the manifest names are removed, then empty round folders.
    """
    try:
        manifest = read_manifest(root)
    except ModelStoreError:
        return
    rounds = manifest.get("rounds", {}).values()
    entries = [f for entry in rounds for f in entry["files"].values()]
    if manifest.get("final"):
        entries.append(manifest["final"])
    for entry in entries:
        path = root / entry["path"]
        path.unlink(missing_ok=True)
        if path.parent != root and not any(path.parent.iterdir()):
            path.parent.rmdir()
    (root / MANIFEST).unlink(missing_ok=True)
