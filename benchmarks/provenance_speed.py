"""Speed benchmark of the TraceFL provenance engine (a script, not a test).

For each setting it prints, on the same model and the same batch of inputs:

* engine time / global forward time (forward under ``torch.no_grad``, eval mode),
* engine time / literal-oracle time; the oracle (``tests/provenance_oracle.py``)
  runs on a subset of the inputs and its time is extrapolated per input,
* the engine's reported peak memory, and the one-off per-round setup time
  (validation + stacking the clients' parameters), which is not part of the
  engine time.

Usage: ``python benchmarks/provenance_speed.py [--device cpu] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
oracle_scores = importlib.import_module("tests.provenance_oracle").oracle_scores
NeuronProvenance = importlib.import_module("tracefl.provenance").NeuronProvenance


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved_times(
    fns: list, repeats: int, device: torch.device
) -> list[list[float]]:
    """Time each function ``repeats`` times, alternating between them.

    Alternating makes the ratios robust to slow drifts in machine load.
    """
    for fn in fns:  # warm-up
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[i].append(time.perf_counter() - start)
    return times


def _clients(model: nn.Module, k: int, seed: int) -> list[dict[str, Tensor]]:
    """``k`` client state dicts: the global parameters plus per-client noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        state = {}
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
            state[name] = p.detach() + 0.01 * noise
        out.append(state)
    return out


def bench(
    arch: str,
    k: int,
    batch: int,
    oracle_inputs: int,
    repeats: int,
    device: torch.device,
) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).to(device).eval()
    inputs = torch.randn(batch, 3, 32, 32, device=device)
    clients = _clients(model, k, seed=1)
    weights = [float(10 + i) for i in range(k)]

    def forward() -> None:
        with torch.no_grad():
            model(inputs)

    start = time.perf_counter()
    engine = NeuronProvenance(model, clients, weights, device=device)
    t_setup = time.perf_counter() - start
    result = engine.attribute(inputs)
    fwd_times, eng_times = _interleaved_times(
        [forward, lambda: engine.attribute(inputs)], repeats, device
    )
    t_forward = statistics.median(fwd_times)
    t_engine = statistics.median(eng_times)
    ratio = statistics.median(e / f for e, f in zip(eng_times, fwd_times, strict=True))

    subset = inputs[:oracle_inputs]
    start = time.perf_counter()
    oracle, _ = oracle_scores(model, clients, weights, subset)
    t_oracle = (time.perf_counter() - start) / oracle_inputs * batch
    ok = torch.allclose(
        result.scores[:oracle_inputs].cpu(), oracle, rtol=1e-3, atol=1e-4
    ) and bool((result.traced[:oracle_inputs].cpu() == oracle.argmax(1)).all())
    print(
        f"{arch:12s} K={k:<4d} B={batch:<3d} L={len(result.layer_names):<4d}"
        f" forward {t_forward * 1e3:8.1f} ms | engine {t_engine * 1e3:8.1f} ms"
        f" = {ratio:6.1f}x forward"
        f" | oracle ~{t_oracle:8.1f} s (extrapolated from {oracle_inputs} inputs)"
        f" -> engine is {t_oracle / t_engine:7.0f}x faster"
        f" | peak {result.peak_memory_bytes / 2**20:7.1f} MiB"
        f" | setup {t_setup:5.2f} s | matches oracle: {ok}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--oracle-inputs", type=int, default=2)
    parser.add_argument(
        "--only", choices=["resnet18", "densenet121", "resnet18-k100"], default=None
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, threads "
        f"{torch.get_num_threads()}, float32, median of {args.repeats} interleaved "
        "repeats (ratio = median of per-repeat engine/forward ratios)"
    )
    settings = [
        ("resnet18", "resnet18", 10),
        ("densenet121", "densenet121", 10),
        ("resnet18-k100", "resnet18", 100),
    ]
    for key, arch, k in settings:
        if args.only in (None, key):
            oracle_n = 1 if k > 10 else args.oracle_inputs
            bench(arch, k, args.batch, oracle_n, args.repeats, device)


if __name__ == "__main__":
    main()
