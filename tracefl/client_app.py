"""TraceFL ClientApp: train on this node's own partition and report what TraceFL needs.

The node config names the partition (``partition-id``) and the federation's
size (``num-partitions``; Flower's simulation sets both for every SuperNode), so
the app runs unchanged on any number of SuperNodes. The reply follows the schema
of :mod:`tracefl.reply`: the trained model, ``num-examples``/``train-loss`` and
the partition id with the label counts the client actually trained on.
"""

from __future__ import annotations

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from tracefl.adversarial.setup import gaming_plan, played_update
from tracefl.config import TraceFLConfig, parse_run_config
from tracefl.dataset import load_client_data
from tracefl.fedinfluence import GradientSampler
from tracefl.fedinfluence_setup import fedinfluence_settings, local_sgd
from tracefl.model import build_model
from tracefl.registry import run_dataset_spec
from tracefl.reply import (
    ARRAYS,
    FEDINFLUENCE,
    METRICS,
    PAYLOAD,
    train_reply_content,
)
from tracefl.train import TrainSettings, evaluate, resolve_device, train


def dp_clipping_mod(
    msg: Message, ctxt: Context, call_next: ClientAppCallable
) -> Message:
    """Apply Flower's ``fixedclipping_mod`` only when the server asks for it.

    The server's ``DifferentialPrivacyClientSideFixedClipping`` wrapper puts the
    clipping norm in the train config; without it the message passes unchanged.
    """
    configs = list(msg.content.config_records.values())
    if configs and KEY_CLIPPING_NORM in configs[0]:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


app = ClientApp()


def _node_partition(context: Context, cfg: TraceFLConfig) -> tuple[int, int]:
    """Read ``partition-id`` and ``num-partitions`` from the node config."""
    try:
        partition_id = int(context.node_config["partition-id"])
        num_partitions = int(context.node_config["num-partitions"])
    except KeyError as err:
        raise KeyError(
            f"SuperNode node config lacks {err}; start it with "
            "--node-config 'partition-id=<i> num-partitions=<n>'."
        ) from err
    if cfg.num_clients and num_partitions != cfg.num_clients:
        raise ValueError(
            f"Run config 'num-clients' = {cfg.num_clients} but this SuperNode has "
            f"'num-partitions' = {num_partitions}: leave num-clients at 0 (the "
            "federation's size) or start as many SuperNodes as num-clients "
            "(simulation: --federation-config num-supernodes=N)."
        )
    return partition_id, num_partitions


def _local_model(cfg: TraceFLConfig, msg: Message) -> torch.nn.Module:
    model = build_model(
        cfg.model,
        run_dataset_spec(cfg.dataset, cfg.image_size),
        max_seq_len=cfg.max_seq_len,
    )
    model.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    return model


@app.train(mods=[dp_clipping_mod])
def train_fn(msg: Message, context: Context) -> Message:
    """Train the received global model on this node's partition."""
    cfg = parse_run_config(context.run_config)
    partition_id, num_partitions = _node_partition(context, cfg)
    server_round = int(msg.content["config"]["server-round"])
    data = load_client_data(cfg, partition_id, num_partitions)
    model = _local_model(cfg, msg)
    settings = TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=cfg.proximal_mu if cfg.fusion == "fedprox" else 0.0,
    )
    seed = cfg.seed + 1000 * server_round + partition_id
    torch.manual_seed(seed)
    sampler = (
        GradientSampler(
            model, fedinfluence_settings(cfg, model), local_sgd(cfg), seed=seed
        )
        if cfg.fedinfluence
        else None
    )
    loss = train(
        model, data.train, settings, resolve_device(cfg.device), seed, on_step=sampler
    )
    model.cpu()
    plan = gaming_plan(cfg, partition_id)  # tracefl.adversarial: a gaming client
    if plan is not None:
        model.load_state_dict(
            played_update(
                plan,
                server_round,
                msg.content[ARRAYS].to_torch_state_dict(),
                model,
                cfg,
                data=(data.train.features, data.train.labels),
                partition_id=partition_id,
            )
        )
    extra = (
        {FEDINFLUENCE: ConfigRecord({PAYLOAD: sampler.payload().to_bytes()})}
        if sampler is not None
        else None
    )
    content = train_reply_content(
        ArrayRecord(model.cpu().state_dict()),
        num_examples=len(data.train),
        train_loss=loss,
        partition_id=partition_id,
        num_partitions=num_partitions,
        label_counts=data.label_counts,
        extra=extra,
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's partition."""
    cfg = parse_run_config(context.run_config)
    partition_id, num_partitions = _node_partition(context, cfg)
    data = load_client_data(cfg, partition_id, num_partitions)
    model = _local_model(cfg, msg)
    loss, accuracy = evaluate(
        model, data.train, cfg.batch_size, resolve_device(cfg.device)
    )
    metrics = MetricRecord(
        {"num-examples": len(data.train), "eval-loss": loss, "eval-acc": accuracy}
    )
    return Message(content=RecordDict({METRICS: metrics}), reply_to=msg)
