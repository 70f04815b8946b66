"""Drive the server side in-process: real clients' training, real Flower strategies.

Clients train with TraceFL's own loop on their real MNIST-5k partitions and
reply with the real reply schema; the strategy built by the ServerApp's
``build_strategy`` and the analysis pipeline process the rounds, exactly as in a
Flower run but without processes, so that server-side behaviour (every
aggregator, every method, the records) is tested in seconds. The end-to-end
tests run the same code through Flower's simulation engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from tests.replies import NodeListGrid, train_request
from tracefl.adversarial.setup import gaming_plan, played_update
from tracefl.analysis import Recorder, build_analyzer
from tracefl.config import TraceFLConfig, parse_run_config
from tracefl.dataset import load_client_data, load_server_test
from tracefl.fedinfluence import GradientSampler
from tracefl.fedinfluence_setup import fedinfluence_settings, local_sgd
from tracefl.model import build_model
from tracefl.registry import dataset_num_classes, run_dataset_spec
from tracefl.reply import FEDINFLUENCE, PAYLOAD, train_reply_content
from tracefl.server_app import build_strategy
from tracefl.train import TrainSettings, train

TINY = {
    "num-clients": 4,
    "min-train-nodes": 4,
    "min-available-nodes": 4,
    "num-server-rounds": 2,
    "local-epochs": 1,
    "lr": 0.05,
    "max-per-client-data-size": 150,
    "max-server-data-size": 200,
    "provenance-inputs-per-label": 1,
    "cross-round-queries-per-label": 3,
    "plots": False,
}

#: A function that may change a client's reply content before it is sent.
Tamper = Callable[[int, int, Message], Message]


@dataclass
class HarnessRun:
    """What a harness run left behind."""

    cfg: TraceFLConfig
    recorder: Recorder
    out_dir: Path
    final_state: dict[str, torch.Tensor]


def run_rounds(
    out_dir: Path, tamper: Tamper | None = None, **overrides: object
) -> HarnessRun:
    """Run ``num-server-rounds`` rounds of the server side on real client training."""
    cfg = parse_run_config({**TINY, "output-dir": str(out_dir), **overrides})
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    device = torch.device("cpu")

    def factory() -> torch.nn.Module:
        return build_model(cfg.model, spec, max_seq_len=cfg.max_seq_len)

    test = load_server_test(cfg)
    size = cfg.num_clients
    num_classes = dataset_num_classes(cfg.dataset)
    recorder = Recorder(out_dir, num_classes, cfg.method_names)
    analyzer = build_analyzer(cfg, test, factory, device, recorder, size)
    strategy = build_strategy(cfg, analyzer, num_classes, size)
    torch.manual_seed(cfg.seed)
    arrays = ArrayRecord(factory().state_dict())
    nodes = [100 + p for p in range(size)]
    grid = NodeListGrid(nodes)
    settings = TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=cfg.proximal_mu if cfg.fusion == "fedprox" else 0.0,
    )
    for rnd in range(1, cfg.num_server_rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        replies = []
        for msg in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            pid = int(msg.metadata.dst_node_id) - 100
            data = load_client_data(cfg, pid, size)
            model = factory()
            model.load_state_dict(arrays.to_torch_state_dict())
            seed = cfg.seed + 1000 * rnd + pid
            torch.manual_seed(seed)
            sampler = (  # as the ClientApp does
                GradientSampler(
                    model, fedinfluence_settings(cfg, model), local_sgd(cfg), seed=seed
                )
                if cfg.fedinfluence
                else None
            )
            loss = train(model, data.train, settings, device, seed, on_step=sampler)
            extra = (
                {FEDINFLUENCE: ConfigRecord({PAYLOAD: sampler.payload().to_bytes()})}
                if sampler is not None
                else None
            )
            plan = gaming_plan(cfg, pid)  # as the ClientApp does
            if plan is not None:
                previous = arrays.to_torch_state_dict()
                own = (data.train.features, data.train.labels)
                model.load_state_dict(
                    played_update(
                        plan, rnd, previous, model, cfg, data=own, partition_id=pid
                    )
                )
            content = train_reply_content(
                ArrayRecord(model.state_dict()),
                num_examples=len(data.train),
                train_loss=loss,
                partition_id=pid,
                num_partitions=size,
                label_counts=data.label_counts,
                extra=extra,
            )
            reply = Message(content=content, reply_to=train_request(100 + pid, rnd))
            replies.append(tamper(rnd, pid, reply) if tamper else reply)
        aggregate, _ = strategy.aggregate_train(rnd, replies)
        if aggregate is not None:
            arrays = aggregate
    analyzer.finish()
    return HarnessRun(cfg, recorder, out_dir, arrays.to_torch_state_dict())


def nan_model(values: ArrayRecord) -> ArrayRecord:
    """The same arrays with NaN in the first floating one."""
    state = values.to_torch_state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    return ArrayRecord(state)


def label_counts_of(run: HarnessRun) -> dict[int, np.ndarray]:
    """Each client's reported label histogram (from clients.csv rows)."""
    out = {}
    for row in run.recorder.client_rows:
        if row["status"] == "fused":
            out[row["client"]] = np.array(
                [row[f"label_{c}"] for c in range(10)], dtype=np.int64
            )
    return out
