"""The run's trigger and gaming plan, built from its validated configuration."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn

from tracefl.config import ConfigError, TraceFLConfig
from tracefl.registry import dataset_num_classes, run_dataset_spec

from .gaming import (
    GamingPlan,
    class_gradient_directions,
    game_update,
    output_layer_keys,
)
from .trigger import ImageTrigger, TokenTrigger, Trigger


def run_trigger(cfg: TraceFLConfig) -> Trigger:
    """The backdoor trigger of a run (image patch or text token).

    Raises
    ------
    ConfigError
        ``backdoor-trigger-token`` is not one token of the model's vocabulary.

    """
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    if spec.kind == "image":
        return ImageTrigger.white(cfg.backdoor_trigger_size, spec.mean, spec.std)
    from tracefl.text import get_tokenizer

    tokenizer = get_tokenizer(cfg.model)
    vocab = tokenizer.get_vocab()
    token = cfg.backdoor_trigger_token
    if token not in vocab:
        pieces = tokenizer.tokenize(token)
        raise ConfigError(
            f"Invalid 'backdoor-trigger-token' = {token!r}: not one token of the "
            f"vocabulary of model '{cfg.model}' (it splits into {pieces}); pick a "
            "rare whole token, e.g. 'cf', 'mn', 'bb'"
        )
    return TokenTrigger(int(vocab[token]))


def gaming_plan(cfg: TraceFLConfig, partition_id: int) -> GamingPlan | None:
    """What client ``partition_id`` plays, or ``None`` for an honest client."""
    if partition_id not in cfg.gaming_client_ids or cfg.gaming_strategy == "none":
        return None
    return GamingPlan(cfg.gaming_strategy, cfg.gaming_strength, cfg.gaming_start_round)


def played_update(
    plan: GamingPlan,
    server_round: int,
    previous: Mapping[str, Tensor],
    model: nn.Module,
    cfg: TraceFLConfig,
    data: tuple[Tensor, Tensor] | None = None,
    partition_id: int = 0,
) -> dict[str, Tensor]:
    """The state dict a gaming client sends after training ``model``.

    Parameters
    ----------
    plan, server_round
        Its strategy and the round.
    previous
        The global model it was sent (state dict).
    model
        Its trained model (on the CPU).
    cfg
        The run's configuration (the number of classes, the seed).
    data
        Its own ``(features, labels)`` (``orthogonal`` estimates the typical
        gradient directions on them, at ``previous``).
    partition_id
        Its partition (seeds ``orthogonal``'s random direction).

    """
    num_classes = dataset_num_classes(cfg.dataset)
    keys = [name for name, _ in model.named_parameters()]
    output = output_layer_keys(model, num_classes) if plan.strategy == "sharpen" else ()
    directions = None
    if plan.adds_orthogonal(server_round):
        if data is None:
            raise ValueError("orthogonal needs the client's own data")
        at_previous = copy.deepcopy(model)
        at_previous.load_state_dict(previous)
        features, labels = data
        directions = class_gradient_directions(
            at_previous, features, labels, num_classes
        )
    return game_update(
        plan,
        server_round,
        previous,
        model.state_dict(),
        keys,
        output,
        directions=directions,
        seed=cfg.seed + 1000 * server_round + partition_id,
    )
