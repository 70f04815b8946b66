"""Speed benchmark of the TraceFL provenance engine (a script, not a test).

What a round pays, measured in one run on the same model and inputs:

* ``forward``: one no-grad eval forward pass of the global model on the batch;
* ``forward + backward``: with parameter gradients, an upper bound of the
  engine's own backward pass (which stops at layer outputs);
* ``copy``: one plain copy (``clone``) of every client tensor, fresh memory, the
  yardstick for set-up (target: set-up <= about two copies);
* ``setup``: constructing a fresh ``NeuronProvenance`` (validation, references to
  the clients, effective weights);
* ``first``: its first ``attribute`` call (layouts probed, buffers allocated);
* ``warm``: a second call on the same engine;
* ``(setup + first) / forward``: what a round pays, in forward passes (targets
  from issue 13 in brackets), and ``warm / forward``;
* the engine's peak memory next to the size of all clients' weights stacked.

Every repeat builds a fresh engine; the times are medians over repeats, taken
interleaved so that slow drifts in machine load affect all terms alike.
``--check`` compares one input against the literal oracle (slow).

Usage: ``python benchmarks/provenance_speed.py [--device cpu] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
provenance = importlib.import_module("tracefl.provenance")
NeuronProvenance = provenance.NeuronProvenance


@dataclass(frozen=True)
class Setting:
    """One benchmark row."""

    key: str
    k: int
    target: float  # (setup + first) / forward target
    build: Callable[[torch.device], tuple[nn.Module, object]]
    distinct: int  # distinct client parameter sets (the rest share storage)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def _vision(arch: str) -> Callable[[torch.device], tuple[nn.Module, object]]:
    def build(device: torch.device) -> tuple[nn.Module, object]:
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(num_classes=10).to(device).eval()
        return model, torch.randn(32, 3, 32, 32, device=device)

    return build


def _minilm(device: torch.device) -> tuple[nn.Module, object]:
    text = importlib.import_module("tracefl.text")
    torch.manual_seed(0)
    model = text.build_text_model("minilm", 4).to(device).eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1000, 20000, (16, 128), generator=gen)
    mask = torch.ones_like(ids)
    mask[::2, 96:] = 0  # half the inputs padded
    ids = ids.masked_fill(mask == 0, 0)
    return model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _clients(model: nn.Module, k: int, distinct: int) -> list[dict[str, Tensor]]:
    """``k`` client state dicts: the global parameters plus per-client noise.

    Only ``distinct`` of them get their own tensors; client ``i`` shares those of
    ``i % distinct`` (keeps K=100 within the machine's memory; the engine reads
    every client's tensors all the same).
    """
    gen = torch.Generator().manual_seed(1)
    pool = []
    for _ in range(distinct):
        state = {}
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
            state[name] = p.detach() + 0.01 * noise
        pool.append(state)
    return [pool[i % distinct] for i in range(k)]


def _copy_seconds(
    clients: list[dict[str, Tensor]], distinct: int, device: torch.device
) -> float:
    """One fresh copy of every client's tensors (extrapolated from ``distinct``)."""

    def copy() -> list[dict[str, Tensor]]:
        return [{n: t.clone() for n, t in s.items()} for s in clients[:distinct]]

    seconds, copies = _timed(copy, device)
    del copies
    return seconds * len(clients) / distinct


def _check(model: nn.Module, clients, inputs, result) -> bool:
    oracle_scores = importlib.import_module("tests.provenance_oracle").oracle_scores
    one = (
        inputs[:1]
        if isinstance(inputs, Tensor)
        else {k: v[:1] for k, v in inputs.items()}
    )
    weights = [float(10 + i) for i in range(len(clients))]
    oracle, _ = oracle_scores(model, clients, weights, one, layers="all")
    got = result.scores[:1].cpu()
    scale = float(oracle.abs().max())
    return bool(torch.allclose(got, oracle, rtol=1e-3, atol=1e-4 * scale))


def bench(setting: Setting, repeats: int, device: torch.device, check: bool) -> None:
    model, inputs = setting.build(device)
    clients = _clients(model, setting.k, setting.distinct)
    weights = [float(10 + i) for i in range(setting.k)]
    stacked = setting.k * sum(p.numel() * p.element_size() for p in model.parameters())

    def forward() -> None:
        with torch.no_grad():
            model(**inputs) if isinstance(inputs, dict) else model(inputs)

    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward() -> None:
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        logits = out if isinstance(out, Tensor) else out.logits
        torch.autograd.grad(logits.max(1).values.sum(), params)

    forward()  # warm the model once (allocator, kernels), as the app has
    names = ("forward", "backward", "copy", "setup", "first", "warm")
    terms: dict[str, list[float]] = {n: [] for n in names}
    result = None
    for _ in range(repeats):
        terms["forward"].append(_timed(forward, device)[0])
        terms["backward"].append(_timed(forward_backward, device)[0])
        terms["copy"].append(_copy_seconds(clients, setting.distinct, device))
        seconds, engine = _timed(
            lambda: NeuronProvenance(model, clients, weights, device=device), device
        )
        terms["setup"].append(seconds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", provenance.ProvenanceCoverageWarning)
            seconds, result = _timed(lambda e=engine: e.attribute(inputs), device)
            terms["first"].append(seconds)
            seconds, _ = _timed(lambda e=engine: e.attribute(inputs), device)
            terms["warm"].append(seconds)
        del engine
    assert result is not None
    med = {n: statistics.median(v) for n, v in terms.items()}
    per_round = statistics.median(
        (s + f) / w
        for s, f, w in zip(
            terms["setup"], terms["first"], terms["forward"], strict=True
        )
    )
    warm = statistics.median(
        w / f for w, f in zip(terms["warm"], terms["forward"], strict=True)
    )
    peak = result.peak_memory_bytes
    macs = len(result.scores) * setting.k * sum(p.numel() for p in params)
    verdict = "ok" if per_round <= setting.target else "MISSED"
    oracle = f", oracle match {_check(model, clients, inputs, result)}" if check else ""
    print(
        f"{setting.key} K={setting.k} B={len(result.scores)} "
        f"L={len(result.layer_names)}: (setup + first) / forward = {per_round:.1f}x "
        f"(target <= {setting.target:g}x: {verdict}), warm / forward = {warm:.1f}x\n"
        f"    forward {med['forward'] * 1e3:.1f} ms, forward + backward (with weight "
        f"gradients) {med['backward'] * 1e3:.1f} ms, B*K*P = {macs / 1e9:.2f} G "
        f"multiply-adds, copy {med['copy'] * 1e3:.1f} ms, "
        f"setup {med['setup'] * 1e3:.1f} ms ({med['setup'] / med['copy']:.2f} copies), "
        f"first {med['first'] * 1e3:.1f} ms, warm {med['warm'] * 1e3:.1f} ms\n"
        f"    peak {peak / 2**20:.1f} MiB ({peak / stacked:.3f} of the "
        f"{stacked / 2**20:.0f} MiB of stacked client weights), untraced share "
        f"{result.coverage.untraced_share:.3f}{oracle}"
    )


SETTINGS = (
    Setting("resnet18", 10, 5.0, _vision("resnet18"), 10),
    Setting("densenet121", 10, 5.0, _vision("densenet121"), 10),
    Setting("resnet18-k100", 100, 20.0, _vision("resnet18"), 10),
    Setting("minilm", 10, 5.0, _minilm, 10),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=[s.key for s in SETTINGS], default=None)
    parser.add_argument("--check", action="store_true", help="compare with the oracle")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device(args.device)]
    if args.device == "cpu" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, "
        f"median of {args.repeats} interleaved repeats, a fresh engine per repeat"
    )
    for device in devices:
        print(f"--- device {device}")
        for setting in SETTINGS:
            if args.only in (None, setting.key):
                check = args.check and setting.k <= 10 and device.type == "cpu"
                bench(setting, args.repeats, device, check)


if __name__ == "__main__":
    main()
