"""Cost of Fed-Influence on TraceFL's LeNet with MNIST-sized inputs (a script).

For each setting (tracked layers, ``N_s``) it prints, measured in one run:

* client: one round of local training (2 epochs, batch 32, SGD with momentum)
  with the sampler over the same round without it (ratio), and the sampler's
  own seconds; the very first sampled round of the process separately (it pays
  torch.func's one-off start-up);
* communication: payload bytes per client and round, and over the model's bytes;
* server: seconds of ``FedInfluence.update`` for ``K`` clients in a round (all
  participating; the second round, where every estimator is non-zero), its state
  and estimated peak bytes, and the estimate of :func:`estimate_cost`;
* FIL: seconds of ``influence_on_loss`` for 64 inputs.

Usage: ``python benchmarks/fedinfluence_cost.py [--samples 500] [--clients 10]
[--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
fi = importlib.import_module("tracefl.fedinfluence")
LeNet = importlib.import_module("tracefl.model").LeNet
dataset = importlib.import_module("tracefl.dataset")
training = importlib.import_module("tracefl.train")
FusedRound = importlib.import_module("tracefl.attribution").FusedRound

CPU = torch.device("cpu")


def mnist_like(seed: int, n: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return dataset.LabeledTensors(x, y)


def local_round(model, data, settings, sgd, seed, sampled: bool):
    """Train a copy; return (seconds, local state, payload or None)."""
    local = copy.deepcopy(model)
    train_settings = training.TrainSettings(2, 32, "sgd", sgd.lr, sgd.momentum, 0.0)
    sampler = fi.GradientSampler(local, settings, sgd, seed=seed) if sampled else None
    start = time.perf_counter()
    training.train(local, data, train_settings, CPU, seed, on_step=sampler)
    seconds = time.perf_counter() - start
    return seconds, local.state_dict(), sampler.payload() if sampled else None


def federated_round(model, datasets, settings, sgd, t):
    states, payloads = [], {}
    for k, data in enumerate(datasets):
        _, state, payload = local_round(model, data, settings, sgd, 10 * t + k, True)
        states.append(state)
        payloads[f"client-{k}"] = payload
    n = [len(d) for d in datasets]
    agg = {
        key: sum(nk / sum(n) * s[key] for nk, s in zip(n, states, strict=True))
        for key in states[0]
    }
    ids = list(payloads)
    fused = FusedRound.weighted_average(
        t, "fedavg", ids, n, model.state_dict(), states, agg
    )
    new = copy.deepcopy(model)
    new.load_state_dict(agg)
    return fused, payloads, new


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500, help="per client")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LeNet(1, 28, 10)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    sgd = fi.LocalSGD(lr=0.01, momentum=0.9)
    data = mnist_like(0, args.samples)
    m = fi.local_iterations(args.samples, 32, 2)
    print(
        f"LeNet/MNIST-sized: {sum(p.numel() for p in model.parameters())} parameters"
        f", {model_bytes} model bytes; {args.samples} samples/client, m = {m} "
        f"local iterations, {args.clients} clients, {args.threads} thread(s)"
    )
    settings_list = [
        (("classifier.5",), 8),
        (("classifier.5",), 16),
        (("classifier.5",), 50),
        (("classifier.3", "classifier.5"), 16),
        (("features.0", "features.3", "classifier.5"), 16),
    ]
    first = fi.FedInfluenceSettings(*settings_list[1])
    seconds, _, _ = local_round(model, data, first, sgd, 0, True)
    print(f"first sampled round of the process: {seconds:.2f} s (one-off start-up)")
    print(
        "layers | N_s | train s | with sampler s | ratio | sampler s | payload B | "
        "payload/model | server update s | state B | peak B (est.) | FIL 64 s"
    )
    test = mnist_like(99, 64)
    for layers, n_s in settings_list:
        settings = fi.FedInfluenceSettings(layers, n_s)
        plain = min(local_round(model, data, settings, sgd, 1, False)[0] for _ in "ab")
        runs = [local_round(model, data, settings, sgd, 1, True) for _ in "ab"]
        sampled = min(r[0] for r in runs)
        payload = runs[0][2]
        cost = fi.check_settings(
            model,
            settings,
            iterations=m,
            num_clients=args.clients,
            participants=args.clients,
        )
        assert payload.nbytes <= cost.payload_bytes  # equal when batches >= N_s
        datasets = [mnist_like(k, args.samples) for k in range(args.clients)]
        estimator = fi.FedInfluence(model, settings)
        g = model
        for t in (1, 2):
            fused, payloads, g = federated_round(g, datasets, settings, sgd, t)
            report = estimator.update(fused, payloads)
        start = time.perf_counter()
        estimator.influence_on_loss(test.features, test.labels)
        fil = time.perf_counter() - start
        print(
            f"{','.join(layers)} | {n_s} | {plain:.2f} | {sampled:.2f} | "
            f"{sampled / plain:.2f} | {payload.seconds:.2f} | {payload.nbytes} | "
            f"{payload.nbytes / model_bytes:.1f} | {report.server_seconds:.3f} | "
            f"{report.state_bytes} | {report.peak_bytes} ({cost.server_peak_bytes})"
            f" | {fil:.3f}"
        )


if __name__ == "__main__":
    main()
