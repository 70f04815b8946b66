"""A TraceFL ClientApp that misbehaves on purpose, for fault-injection tests only.

:func:`tooling.fault_harness.write_faulty_app` copies this file into a temporary
Flower app beside a ``faults.json`` and a ``pyproject.toml`` whose ServerApp is
the real ``tracefl.server_app:app``. Each reply is made by TraceFL's own train
function (:func:`tracefl.client_app.train_fn`) unless a fault of
``faults.json`` matches this node's ``partition-id`` and the server round; the
first match decides what happens instead (see
:data:`tooling.fault_harness.FAULT_KINDS`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from tracefl import client_app as tracefl_client
from tracefl.reply import ATTRIBUTION

FAULTS_FILE = Path(__file__).with_name("faults.json")

app = ClientApp()


def matching_fault(partition_id: int, server_round: int) -> dict[str, Any] | None:
    """The first fault of ``faults.json`` for this partition and round, if any."""
    for fault in json.loads(FAULTS_FILE.read_text(encoding="utf-8"))["faults"]:
        partitions, rounds = fault["partitions"], fault["rounds"]
        if (partitions is None or partition_id in partitions) and (
            rounds is None or server_round in rounds
        ):
            return fault
    return None


def _first_float_key(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if torch.is_floating_point(v))


def _corrupt_arrays(reply: Message, kind: str) -> None:
    state = reply.content["arrays"].to_torch_state_dict()
    key = _first_float_key(state)
    if kind in ("nan", "inf"):
        state[key] = torch.full_like(state[key], float(kind))
    elif kind == "wrong-shape":
        shape = list(state[key].shape)
        shape[0] += 1
        state[key] = torch.zeros(shape, dtype=state[key].dtype)
    elif kind == "wrong-dtype":
        state[key] = state[key].to(torch.int64)
    elif kind == "missing-array":
        del state[key]
    elif kind == "extra-array":
        state["injected.extra"] = torch.zeros(3)
    reply.content["arrays"] = ArrayRecord(torch_state_dict=state)


def _corrupt_reply(reply: Message, kind: str) -> Message:
    content = reply.content
    if kind == "zero-examples":
        content["metrics"]["num-examples"] = 0
    elif kind == "negative-label-counts":
        counts = list(content[ATTRIBUTION]["label-counts"])
        content[ATTRIBUTION]["label-counts"] = [-1, *counts[1:]]
    elif kind == "label-counts-length":
        counts = list(content[ATTRIBUTION]["label-counts"])
        content[ATTRIBUTION]["label-counts"] = [*counts, 0]
    elif kind == "missing-attribution":
        del content[ATTRIBUTION]
    else:
        _corrupt_arrays(reply, kind)
    return reply


@app.train(mods=[tracefl_client.dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """TraceFL's training, unless a fault of ``faults.json`` applies."""
    partition_id = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    fault = matching_fault(partition_id, server_round)
    if fault is None:
        return tracefl_client.train_fn(msg, context)
    kind = fault["kind"]
    if kind == "raise":
        raise RuntimeError(
            f"injected fault: partition {partition_id} raises in round {server_round}"
        )
    if kind == "sleep":
        time.sleep(float(fault["seconds"]))
        return tracefl_client.train_fn(msg, context)
    return _corrupt_reply(tracefl_client.train_fn(msg, context), kind)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """TraceFL's evaluation, unchanged."""
    return tracefl_client.evaluate_fn(msg, context)
