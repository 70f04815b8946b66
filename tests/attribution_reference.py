"""Slow literal references and a tiny real FedAvg loop for the attribution tests.

Deliberately simple: one input at a time, the objective written out, plain
``torch.autograd.grad`` on a copy of the model and an explicit sum over
parameters for every client.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tracefl.attribution import FusedRound, floating_entries


def literal_objective(logits: Tensor, target: int, objective: str) -> Tensor:
    """``f`` for one input's ``(C,)`` logits, written out."""
    picked = logits[target]
    if objective == "logit":
        return picked
    if objective == "log_softmax":
        return picked - torch.log(sum(torch.exp(z) for z in logits))
    if objective == "margin":
        others = [logits[c] for c in range(len(logits)) if c != target]
        return picked - max(others) if others else picked
    raise ValueError(objective)


def _traced_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    types: tuple[type, ...] = (nn.Linear, nn.Conv2d, nn.LayerNorm)
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    if pytorch_utils is not None:
        types = (*types, pytorch_utils.Conv1D)
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, types) and getattr(m, "weight", None) is not None
    ]


def parameter_names(model: nn.Module, layers: str) -> list[str]:
    """Names of the parameters a method reads.

    ``paper``: weight and bias of the paper's layer types, listed here;
    ``all``: the parameters of the layers the engine's ``"all"`` tracers declare
    (which families exist is the engine's choice; the math is checked here).
    """
    if layers == "paper":
        names = []
        for mod_name, module in _traced_modules(model):
            for p in ("weight", "bias"):
                if isinstance(getattr(module, p, None), nn.Parameter):
                    names.append(f"{mod_name}.{p}" if mod_name else p)
        return names
    from tracefl.provenance.layers import LAYER_SETS, find_tracer

    names, claimed = [], []
    for mod_name, module in model.named_modules():
        if any(mod_name.startswith(c + ".") for c in claimed):
            continue
        tracer = find_tracer(module, LAYER_SETS["all"])
        if tracer is None:
            continue
        if tracer.claims_children:
            claimed.append(mod_name)
        for spec in tracer.layers(module, mod_name):
            names.extend(spec.params)
    return names


def _one(inputs: Tensor | Mapping[str, Tensor], b: int):
    if isinstance(inputs, Tensor):
        return (inputs[b : b + 1],), {}
    return (), {k: v[b : b + 1] for k, v in inputs.items()}


def _logits(out) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits


def reference_scores(
    model: nn.Module,
    param_sets: Sequence[Mapping[str, Tensor]],
    inputs: Tensor | Mapping[str, Tensor],
    targets: Sequence[int],
    objective: str,
    layers: str,
) -> Tensor:
    """``(B, K)``: ``sum_p <df/dp, P_k[p]>`` per input, at ``model``."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    names = parameter_names(model, layers)
    rows = []
    for b, target in enumerate(targets):
        args, kwargs = _one(inputs, b)
        logits = _logits(model(*args, **kwargs))[0]
        f = literal_objective(logits, int(target), objective)
        grads = torch.autograd.grad(f, [params[n] for n in names], allow_unused=True)
        row = []
        for p_set in param_sets:
            total = 0.0
            for name, g in zip(names, grads, strict=True):
                if g is not None:
                    total += float((g.double() * p_set[name].double()).sum())
            row.append(total)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def objective_of(
    model: nn.Module,
    state: Mapping[str, Tensor] | None,
    inputs: Tensor | Mapping[str, Tensor],
    targets: Sequence[int],
    objective: str,
) -> Tensor:
    """``(B,)`` objective of a copy of ``model`` with ``state`` loaded."""
    model = copy.deepcopy(model).eval()
    if state is not None:
        own = model.state_dict()
        own.update({k: v.to(own[k].dtype) for k, v in state.items()})
        model.load_state_dict(own)
    values = []
    with torch.no_grad():
        for b, target in enumerate(targets):
            args, kwargs = _one(inputs, b)
            logits = _logits(model(*args, **kwargs))[0]
            values.append(float(literal_objective(logits, int(target), objective)))
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------ models


class TinyCNN(nn.Module):
    """conv-BN-relu-pool-conv-relu-linear-relu-linear on 1x8x8 images."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc1 = nn.Linear(6 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_bert(num_labels: int = 3) -> nn.Module:
    import transformers

    config = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
        max_position_embeddings=16,
    )
    config.num_labels = num_labels
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config).double()


def tiny_gpt2(num_labels: int = 3) -> nn.Module:
    import transformers

    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16, pad_token_id=0
    )
    config.num_labels = num_labels
    torch.manual_seed(0)
    return transformers.GPT2ForSequenceClassification(config).double()


def token_inputs(batch: int = 3, length: int = 6) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, length - 2 :] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


# ------------------------------------------------------------------ rounds


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the model's floating state entries."""
    return {
        k: v.detach().clone() for k, v in floating_entries(model.state_dict()).items()
    }


def load(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``state``'s floating entries."""
    out = copy.deepcopy(model)
    own = out.state_dict()
    own.update({k: v.to(own[k].dtype) for k, v in state.items()})
    out.load_state_dict(own)
    return out


def class_data(
    n: int, num_classes: int, labels: Sequence[int], seed: int
) -> tuple[Tensor, Tensor]:
    """Learnable 1x8x8 images: a class-specific bright row plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor([labels[i % len(labels)] for i in range(n)], dtype=torch.int64)
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=gen)
    for i, c in enumerate(y.tolist()):
        x[i, 0, 2 * (c % num_classes), :] += 2.0
    return x, y


def fedavg_rounds(
    model: nn.Module,
    client_labels: Mapping[str, Sequence[int]],
    participants: Sequence[Sequence[str]],
    *,
    noise_std: float = 0.0,
    steps: int = 3,
    seed: int = 0,
) -> list[tuple[FusedRound, nn.Module]]:
    """Real FedAvg: each round's participants run SGD from the global model.

    Returns every round's :class:`FusedRound` and its global model (a copy).
    Client ``c`` holds 8 + 4 * index samples of its labels; with ``noise_std``
    Gaussian noise is added to every floating entry of the aggregate.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    data = {
        cid: class_data(8 + 4 * i, 4, labels, seed + i)
        for i, (cid, labels) in enumerate(client_labels.items())
    }
    data = {k: (x.to(dtype), y) for k, (x, y) in data.items()}
    glob = copy.deepcopy(model)
    out = []
    for t, ids in enumerate(participants, start=1):
        previous = snapshot(glob)
        states, sizes = [], []
        for cid in ids:
            local = copy.deepcopy(glob).train()
            opt = torch.optim.SGD(local.parameters(), lr=0.1)
            x, y = data[cid]
            for _ in range(steps):
                opt.zero_grad()
                nn.functional.cross_entropy(local(x), y).backward()
                opt.step()
            states.append(floating_entries(local.state_dict()))
            sizes.append(len(y))
        total = sum(sizes)
        aggregate = {
            k: sum(
                n / total * s[k].double() for n, s in zip(sizes, states, strict=True)
            )
            for k in previous
        }
        noise = None
        if noise_std:
            noise = {
                k: noise_std * torch.randn(v.shape, generator=gen, dtype=torch.float64)
                for k, v in aggregate.items()
            }
            aggregate = {k: aggregate[k] + noise[k] for k in aggregate}
        aggregate = {k: v.to(previous[k].dtype) for k, v in aggregate.items()}
        if noise is not None:
            noise = {k: v.to(previous[k].dtype) for k, v in noise.items()}
        rnd = FusedRound.weighted_average(
            t, "fedavg", list(ids), sizes, previous, states, aggregate, noise
        )
        glob = load(glob, aggregate)
        out.append((rnd, copy.deepcopy(glob)))
    return out


def masked_round(
    model: nn.Module,
    num_clients: int,
    *,
    scale: float = 0.05,
    noise_std: float = 0.0,
    seed: int = 0,
) -> tuple[FusedRound, nn.Module]:
    """A round with per-coordinate shares and a server residual.

    Weights get random positive shares summing to 1 per coordinate, biases a
    one-hot mask (a coordinate-wise "median" picks one client), every key a
    residual (server momentum) and optionally DP noise.
    """
    gen = torch.Generator().manual_seed(seed)
    previous = snapshot(model)
    clients, shares = [], [dict() for _ in range(num_clients)]
    for _ in range(num_clients):
        clients.append(
            {
                k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                for k, v in previous.items()
            }
        )
    for key, value in previous.items():
        if key.endswith("bias"):
            pick = torch.randint(0, num_clients, value.shape, generator=gen)
            for k in range(num_clients):
                shares[k][key] = (pick == k).double()
        else:
            raw = (
                torch.rand(
                    (num_clients, *value.shape), generator=gen, dtype=torch.float64
                )
                + 0.1
            )
            raw = raw / raw.sum(0)
            for k in range(num_clients):
                shares[k][key] = raw[k]
    residual = {
        k: 0.01 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        for k, v in previous.items()
    }
    noise = None
    if noise_std:
        noise = {
            k: noise_std * torch.randn(v.shape, generator=gen, dtype=torch.float64)
            for k, v in previous.items()
        }
        residual = {k: residual[k] + noise[k] for k in residual}
    aggregate = {
        key: (
            residual[key]
            + sum(shares[k][key] * clients[k][key].double() for k in range(num_clients))
        ).to(previous[key].dtype)
        for key in previous
    }
    residual = {
        key: aggregate[key].double()
        - sum(shares[k][key] * clients[k][key].double() for k in range(num_clients))
        for key in previous
    }
    rnd = FusedRound(
        server_round=1,
        aggregator="masked",
        client_ids=tuple(f"c{k}" for k in range(num_clients)),
        num_examples=tuple(10 * (k + 1) for k in range(num_clients)),
        previous=previous,
        clients=tuple(clients),
        aggregate=aggregate,
        shares=tuple(shares),
        residual=residual,
        noise=noise,
    )
    return rnd, load(model, aggregate)


def perturbed_fedavg_round(
    model: nn.Module, sizes: Sequence[int], scale: float = 0.05, seed: int = 0
) -> tuple[FusedRound, nn.Module]:
    """A FedAvg round whose client models are random perturbations."""
    gen = torch.Generator().manual_seed(seed)
    previous = snapshot(model)
    clients = [
        {
            k: v + scale * (1 + i) * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in previous.items()
        }
        for i in range(len(sizes))
    ]
    total = sum(sizes)
    aggregate = {
        k: sum(n / total * c[k] for n, c in zip(sizes, clients, strict=True))
        for k in previous
    }
    rnd = FusedRound.weighted_average(
        1,
        "fedavg",
        [f"c{i}" for i in range(len(sizes))],
        sizes,
        previous,
        clients,
        aggregate,
    )
    return rnd, load(model, aggregate)


def total(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Key-wise float64 sum of state dicts."""
    return {k: sum(s[k].double() for s in states) for k in states[0]}
