"""The ``K`` client parameter sets as the traced layers use them.

Set-up keeps *references* to each client's tensors (no stacking copy; a tensor
is only copied when it is on another device or in another dtype than the
engine), plus the global model's own parameters as set ``K`` (for the coverage
report). Contractions gather the parameter views they need, for a chunk of
clients at a time, into a reused buffer: memory stays bounded by
``client_chunk_size`` times the largest layer, whatever ``K``.

An *effective* parameter is what the module computes with: the plain parameter,
or for a parametrised weight (``torch.nn.utils.parametrize``, e.g.
``parametrizations.weight_norm``, or the old ``weight_norm`` hook) the weight the
parametrisation computes from the client's raw tensors (``original0``,
``original1`` / ``weight_g``, ``weight_v``); buffers a parametrisation needs come
from the global model. Effective weights of parametrised layers are computed once
at set-up. Such a parametrisation is not linear in its raw tensors, so for
updates or share-weighted sets it is the parametrisation of that set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from .layers.base import ParamView, Workspace, weight_norm_hook
from .validation import check_finite_state


def _on(t: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``t`` itself when already on ``device`` in ``dtype`` (no copy), else a copy."""
    return t if t.device == device and t.dtype == dtype else t.to(device, dtype)


def split_key(key: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``."""
    module, _, attr = key.rpartition(".")
    return module, attr


def raw_keys(model: nn.Module, key: str) -> tuple[str, ...]:
    """State-dict keys of the raw tensors the effective parameter ``key`` uses."""
    module_name, attr = split_key(key)
    module = model.get_submodule(module_name)
    prefix = f"{module_name}." if module_name else ""
    if parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]
        return tuple(
            f"{prefix}parametrizations.{attr}.{n}"
            for n, _ in plist.named_parameters(recurse=False)
        )
    if weight_norm_hook(module, attr) is not None:
        return (f"{prefix}{attr}_g", f"{prefix}{attr}_v")
    return (key,)


def effective(model: nn.Module, key: str, state: Mapping[str, Tensor]) -> Tensor:
    """The effective parameter ``key`` computed from the raw tensors in ``state``."""
    module_name, attr = split_key(key)
    module = model.get_submodule(module_name)
    prefix = f"{module_name}." if module_name else ""
    if parametrize.is_parametrized(module, attr):
        plist = module.parametrizations[attr]
        raw = {
            n: state[f"{prefix}parametrizations.{attr}.{n}"]
            for n, _ in plist.named_parameters(recurse=False)
        }
        with torch.no_grad():
            return functional_call(plist, raw, ())
    hook = weight_norm_hook(module, attr)
    if hook is not None:
        g, v = state[f"{prefix}{attr}_g"], state[f"{prefix}{attr}_v"]
        with torch.no_grad():
            return torch._weight_norm(v, g, hook.dim)
    return state[key]


class ClientParams:
    """Effective traced parameters of ``K`` clients and, last, the global model.

    Parameters
    ----------
    model
        The global model.
    states
        ``K`` validated client state dicts (holding every raw key of ``keys``).
    client_ids
        Their ids (for errors).
    keys
        Effective parameter keys of every traced layer.
    device, dtype
        Where and in which dtype the engine computes.

    """

    def __init__(
        self,
        model: nn.Module,
        states: Sequence[Mapping[str, Tensor]],
        client_ids: Sequence[str],
        keys: Sequence[str],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        global_state = {k: v.detach() for k, v in model.state_dict().items()}
        named = dict(model.named_parameters(remove_duplicate=False))
        computed = [k for k in keys if raw_keys(model, k) != (k,)]
        plain = [k for k in keys if raw_keys(model, k) == (k,)]
        self.sets: list[dict[str, Tensor]] = []
        for state, cid in zip(states, client_ids, strict=True):
            entries = {k: _on(state[k], device, dtype) for k in plain}
            for key in computed:
                entries[key] = _on(effective(model, key, state), device, dtype)
            check_finite_state(
                {k: entries[k] for k in computed}, f"client {cid!r} (effective weight)"
            )
            self.sets.append(entries)
        entries = {k: _on(named[k].detach(), device, dtype) for k in plain}
        for key in computed:
            entries[key] = _on(effective(model, key, global_state), device, dtype)
        self.sets.append(entries)

    @property
    def num_sets(self) -> int:
        """``K + 1``: the clients and the global model."""
        return len(self.sets)

    def gather(
        self, view: ParamView, start: int, stop: int, workspace: Workspace, slot: str
    ) -> Tensor:
        """``(stop - start, *view_shape)``: ``view`` of sets ``start:stop``."""
        parts = [view.apply(self.sets[k][view.key]) for k in range(start, stop)]
        if len(parts) == 1:
            return parts[0].unsqueeze(0)
        out = workspace.get(slot, (len(parts), *parts[0].shape), parts[0])
        torch.stack(parts, out=out)
        return out
