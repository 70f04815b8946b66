"""Cross-round (b)'s state: one cumulative fused update per client, RAM or disk.

After every round ``t`` the store adds client ``k``'s fused update and the
server's residual update::

    U_k      += A_k^t * Delta_k^t             (clients present in round t)
    U_server += residual_update_t - noise_t
    U_noise  += noise_t                       (only with DP)

so that, for the final model ``theta_T`` (every round added, in order)::

    theta_T = theta_0 + sum_k U_k + U_server + U_noise                (exact)

up to float64 rounding (the default accumulation dtype; with float32 the
identity holds to float32 rounding). Memory: one state dict per client ever
seen, plus ``server``, ``noise``, ``theta_0`` and the latest aggregate (kept to
check that each round starts from the previous one's model).

Entries live in RAM until a new one would exceed ``ram_budget_bytes``; from
then on new entries are safetensors files in ``directory`` (read and written one
entry at a time, so RAM stays at about one state dict beyond the budget). The
directory belongs to one store. Without a directory, a round whose new entries
would not fit is rejected before anything changes.
:meth:`CumulativeUpdates.save` and :meth:`CumulativeUpdates.load` round-trip a
store through a directory (``manifest.json`` + one ``.safetensors`` per entry).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .errors import AttributionError
from .fused_round import FusedRound, StateDict, floating_entries
from .result import NOISE_ID, SERVER_ID
from .terms import (
    check_client_ids,
    client_fused_update,
    residual_update_sets,
    state_nbytes,
)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_INITIAL = "initial"
_LATEST = "latest"
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class _Entry:
    """One stored state dict: in RAM (``state``) or a safetensors file."""

    state: StateDict | None = None
    path: Path | None = None

    def load(self) -> StateDict:
        if self.state is not None:
            return self.state
        assert self.path is not None
        return load_file(str(self.path))

    def write(self, state: StateDict) -> None:
        if self.path is None:
            self.state = state
            return
        _write_safetensors(state, self.path)


class CumulativeUpdates:
    """``U_k = sum_t A_k^t Delta_k^t`` per client (cross-round (b)'s store).

    Parameters
    ----------
    ram_budget_bytes
        Most bytes of stored state dicts kept in RAM (``None``: no limit). An
        entry that would exceed it goes to ``directory``.
    directory
        Where entries beyond the RAM budget are written (created if needed).
    dtype
        Accumulation dtype, ``torch.float64`` (exact identity) or
        ``torch.float32`` (half the memory).

    """

    def __init__(
        self,
        *,
        ram_budget_bytes: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if ram_budget_bytes is not None and (
            isinstance(ram_budget_bytes, bool)
            or not isinstance(ram_budget_bytes, int)
            or ram_budget_bytes < 0
        ):
            raise AttributionError(
                "ram_budget_bytes must be None or an int >= 0, got "
                f"{ram_budget_bytes!r}"
            )
        if dtype not in _DTYPES.values():
            raise AttributionError(
                f"dtype must be torch.float64 or torch.float32, got {dtype}"
            )
        self.ram_budget_bytes = ram_budget_bytes
        self.directory = None if directory is None else Path(directory)
        self.dtype = dtype
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._entries: dict[str, _Entry] = {}
        self._client_ids: list[str] = []
        self._rounds: list[int] = []

    # ----------------------------------------------------------------- views
    @property
    def client_ids(self) -> tuple[str, ...]:
        """Clients ever added, in order of first appearance."""
        return tuple(self._client_ids)

    @property
    def pseudo_ids(self) -> tuple[str, ...]:
        """``("server",)`` or ``("server", "noise")`` (once a round had noise)."""
        return tuple(i for i in (SERVER_ID, NOISE_ID) if i in self._entries)

    @property
    def rounds(self) -> tuple[int, ...]:
        """Rounds added so far."""
        return tuple(self._rounds)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Key -> shape of every stored state (fixed by the first round)."""
        return dict(self._shapes)

    @property
    def ram_bytes(self) -> int:
        """Bytes of state dicts held in RAM."""
        return sum(state_nbytes(e.state) for e in self._entries.values() if e.state)

    @property
    def num_on_disk(self) -> int:
        """Number of stored state dicts (``U``'s, ``theta_0``, latest) on disk."""
        return sum(e.path is not None for e in self._entries.values())

    def get(self, column_id: str) -> StateDict:
        """``U`` of a client or pseudo-client (``dtype``, full shapes).

        A RAM entry is returned as stored; do not modify it in place.
        """
        if column_id not in self._client_ids and column_id not in self.pseudo_ids:
            raise AttributionError(
                f"the store has no client {column_id!r}; it holds "
                f"{list(self._client_ids) + list(self.pseudo_ids)}"
            )
        return self._entries[column_id].load()

    def initial(self) -> StateDict:
        """``theta_0``: the model the first added round started from."""
        self._require_rounds()
        return self._entries[_INITIAL].load()

    def reconstruct(self) -> StateDict:
        """``theta_0 + sum_k U_k + U_server (+ U_noise)`` in float64."""
        total = {k: v.double().clone() for k, v in self.initial().items()}
        for cid in (*self._client_ids, *self.pseudo_ids):
            for key, value in self.get(cid).items():
                total[key] += value.double()
        return total

    # --------------------------------------------------------------- updates
    def add(self, rnd: FusedRound) -> None:
        """Add one round; rounds must come in order, every one of them."""
        if not isinstance(rnd, FusedRound):
            raise AttributionError(f"rnd must be a FusedRound, got {type(rnd)!r}")
        check_client_ids(rnd.client_ids)
        if self._rounds:
            self._check_next(rnd)
        self._check_room(rnd)  # every check before the first change
        if not self._rounds:
            self._shapes = {k: tuple(v.shape) for k, v in rnd.previous.items()}
            self._new_entry(_INITIAL, self._cast(rnd.previous))
        fused_total: StateDict = {}
        for k, cid in enumerate(rnd.client_ids):  # one client at a time
            fused = client_fused_update(rnd, k)
            self._accumulate(cid, fused)
            for key, value in fused.items():
                if key in fused_total:
                    fused_total[key] += value
                else:
                    fused_total[key] = value.clone()
            if cid not in self._client_ids:
                self._client_ids.append(cid)
        for pid, term in residual_update_sets(rnd, fused_total).items():
            self._accumulate(pid, term)
        latest = self._cast(rnd.aggregate)
        if _LATEST in self._entries:
            self._entries[_LATEST].write(latest)
        else:
            self._new_entry(_LATEST, latest)
        self._rounds.append(rnd.server_round)

    def check_model(self, model: nn.Module) -> None:
        """Raise unless the model's floating state has the store's keys and shapes."""
        self._require_rounds()
        if not isinstance(model, nn.Module):
            raise AttributionError(f"model must be an nn.Module, got {type(model)!r}")
        own = floating_entries(model.state_dict())
        self.check_shapes({k: tuple(v.shape) for k, v in own.items()}, "the model")

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], owner: str) -> None:
        """Raise naming the first key or shape where ``shapes`` differs."""
        missing = [k for k in self._shapes if k not in shapes]
        extra = [k for k in shapes if k not in self._shapes]
        if missing or extra:
            raise AttributionError(
                f"the cumulative store does not match {owner}: keys missing from "
                f"{owner} {missing[:3]}, keys {owner} has but the store does not "
                f"{extra[:3]}"
            )
        for key, shape in self._shapes.items():
            if tuple(shapes[key]) != shape:
                raise AttributionError(
                    f"the cumulative store does not match {owner}: {key!r} has shape "
                    f"{shape} in the store and {tuple(shapes[key])} in {owner}"
                )

    # ----------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the store to ``directory`` (manifest + one file per entry)."""
        self._require_rounds()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        files = {}
        for index, (name, entry) in enumerate(self._entries.items()):
            target = out / f"{index:06d}.safetensors"
            if entry.path is None:
                _write_safetensors(entry.load(), target)
            elif entry.path.resolve() != target.resolve():
                shutil.copyfile(entry.path, target)
            files[name] = target.name
        manifest = {
            "format_version": FORMAT_VERSION,
            "dtype": str(self.dtype).removeprefix("torch."),
            "rounds": self._rounds,
            "client_ids": self._client_ids,
            "shapes": {k: list(v) for k, v in self._shapes.items()},
            "files": files,
        }
        tmp = out / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, out / MANIFEST)
        return out

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, ram_budget_bytes: int | None = None
    ) -> CumulativeUpdates:
        """A store saved by :meth:`save`.

        Entries fit into ``ram_budget_bytes`` are read into RAM; the others stay
        in ``directory`` (which then also takes new entries and their updates).
        """
        folder = Path(directory)
        path = folder / MANIFEST
        if not path.is_file():
            raise AttributionError(f"no cumulative store at {folder} (no {MANIFEST})")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise AttributionError(
                f"cumulative store {folder} has format_version={version!r}; this "
                f"version reads {FORMAT_VERSION}"
            )
        dtype = manifest.get("dtype")
        if dtype not in _DTYPES:
            raise AttributionError(f"cumulative store {folder} has dtype={dtype!r}")
        store = cls(
            ram_budget_bytes=ram_budget_bytes, directory=folder, dtype=_DTYPES[dtype]
        )
        store._shapes = {k: tuple(v) for k, v in manifest["shapes"].items()}
        store._rounds = [int(r) for r in manifest["rounds"]]
        store._client_ids = [str(c) for c in manifest["client_ids"]]
        itemsize = torch.empty(0, dtype=store.dtype).element_size()
        for name, file in manifest["files"].items():
            entry = _Entry(path=folder / file)
            with safe_open(str(entry.path), framework="pt") as handle:
                names = handle.keys()
                shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in names}
            store.check_shapes(shapes, f"file {file} ({name})")
            nbytes = itemsize * sum(math.prod(v) for v in shapes.values())
            if store._fits(nbytes):
                entry = _Entry(state=entry.load())
            store._entries[name] = entry
        return store

    # --------------------------------------------------------------- private
    def _require_rounds(self) -> None:
        if not self._rounds:
            raise AttributionError(
                "the cumulative store is empty; add(round) after every aggregation"
            )

    def _cast(self, state: Mapping[str, Tensor]) -> StateDict:
        """Private copies (entries are updated in place: never alias a round's)."""
        return {
            k: v.detach().to("cpu", self.dtype, copy=True).contiguous()
            for k, v in state.items()
        }

    def _check_next(self, rnd: FusedRound) -> None:
        last = self._rounds[-1]
        if rnd.server_round <= last:
            raise AttributionError(
                f"round {rnd.server_round} added after round {last}; rounds must be "
                "added once each, in increasing order"
            )
        self.check_shapes(
            {k: tuple(v.shape) for k, v in rnd.previous.items()},
            f"round {rnd.server_round}",
        )
        latest = self._entries[_LATEST].load()
        for key, value in rnd.previous.items():
            mine = latest[key].double()
            if not torch.equal(mine, value.detach().cpu().double()):
                gap = float((mine - value.detach().cpu().double()).abs().max())
                raise AttributionError(
                    f"round {rnd.server_round} did not start from round {last}'s "
                    f"aggregate ({key!r} differs by up to {gap:.3g}); the store "
                    "needs every round, in order"
                )

    def _check_room(self, rnd: FusedRound) -> None:
        """Without a directory, fail before a round whose new entries exceed RAM."""
        if self.directory is not None or self.ram_budget_bytes is None:
            return
        names = [*rnd.client_ids, SERVER_ID, *([NOISE_ID] if rnd.noise else [])]
        if not self._rounds:
            names += [_INITIAL, _LATEST]
        new = [n for n in names if n not in self._entries]
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        one = itemsize * sum(v.numel() for v in rnd.previous.values())
        if new and self.ram_bytes + len(new) * one > self.ram_budget_bytes:
            raise AttributionError(
                f"the cumulative store needs {len(new) * one} more bytes for round "
                f"{rnd.server_round} (new entries {new[:3]}) but "
                f"ram_budget_bytes={self.ram_budget_bytes} ({self.ram_bytes} in "
                "use); pass directory= to keep updates on disk"
            )

    def _accumulate(self, name: str, term: Mapping[str, Tensor]) -> None:
        term = self._cast(term)
        entry = self._entries.get(name)
        if entry is None:
            self._new_entry(name, term)
            return
        current = entry.load()
        for key, value in term.items():
            current[key] += value
        entry.write(current)

    def _fits(self, nbytes: int) -> bool:
        budget = self.ram_budget_bytes
        return budget is None or self.ram_bytes + nbytes <= budget

    def _new_entry(self, name: str, state: StateDict) -> None:
        nbytes = state_nbytes(state)
        if self._fits(nbytes):
            self._entries[name] = _Entry(state=state)
            return
        if self.directory is None:
            raise AttributionError(
                f"the cumulative store needs {nbytes} more bytes for {name!r} but "
                f"ram_budget_bytes={self.ram_budget_bytes} ({self.ram_bytes} in "
                "use); pass directory= to keep updates on disk"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"entry-{len(self._entries):06d}.safetensors"
        _write_safetensors(state, path)
        self._entries[name] = _Entry(path=path)


def _write_safetensors(state: Mapping[str, Tensor], path: Path) -> None:
    """Write atomically (temp file + rename), so a crash leaves the old file."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)
