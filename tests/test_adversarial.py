"""Backdoor triggers, gaming transforms, their config keys, secure aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from tests.replies import train_request
from tracefl.adversarial import (
    GamingPlan,
    ImageTrigger,
    TokenTrigger,
    backdoor_label_map,
    game_update,
    output_layer_keys,
    poison_samples,
)
from tracefl.adversarial.gaming import (
    STRATEGIES,
    class_gradient_directions,
    orthogonal_component,
)
from tracefl.adversarial.setup import gaming_plan, played_update, run_trigger
from tracefl.config import (
    GAMING_STRATEGIES,
    ConfigError,
    check_federation,
    parse_run_config,
)
from tracefl.model import LeNet
from tracefl.registry import dataset_spec
from tracefl.reply import ReplyRejectedError, read_train_reply
from tracefl.secure_aggregation import SECAGGPLUS_RECORD

# ------------------------------------------------------------------ triggers


def test_image_trigger_stamps_the_bottom_right_square_only() -> None:
    spec = dataset_spec("mnist")
    trigger = ImageTrigger.white(3, spec.mean, spec.std)
    images = torch.randn(2, 1, 28, 28)
    before = images.clone()
    out = trigger.apply(images)
    white = (1 - spec.mean[0]) / spec.std[0]
    assert torch.equal(images, before)  # the input is not modified
    for n in range(2):
        for i in range(28):
            for j in range(28):
                want = white if (i >= 25 and j >= 25) else before[n, 0, i, j].item()
                assert out[n, 0, i, j].item() == pytest.approx(want)
    # The white value is what a white pixel (255) normalises to.
    assert white == pytest.approx((255 / 255 - 0.1307) / 0.3081)


def test_image_trigger_per_channel_value_and_bad_sizes() -> None:
    spec = dataset_spec("cifar10")
    out = ImageTrigger.white(2, spec.mean, spec.std).apply(torch.zeros(1, 3, 32, 32))
    for c in range(3):
        assert out[0, c, -1, -1].item() == pytest.approx(
            (1 - spec.mean[c]) / spec.std[c]
        )
        assert out[0, c, -3, -1].item() == 0.0
    with pytest.raises(ValueError, match="does not fit 8x8"):
        ImageTrigger(9, (1.0,)).apply(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="channel values"):
        ImageTrigger(2, (1.0,)).apply(torch.zeros(1, 3, 8, 8))


def test_token_trigger_inserts_after_the_first_token() -> None:
    ids = torch.tensor([[101, 7, 8, 102, 0, 0], [101, 5, 6, 7, 8, 102]])
    mask = (ids != 0).long()
    before = ids.clone()
    out = TokenTrigger(999).apply({"input_ids": ids, "attention_mask": mask})
    assert torch.equal(ids, before)
    # A row with padding grows into it.
    assert out["input_ids"][0].tolist() == [101, 999, 7, 8, 102, 0]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    # A full row keeps its last token ([SEP]) and drops the one before it.
    assert out["input_ids"][1].tolist() == [101, 999, 5, 6, 7, 102]
    assert out["attention_mask"][1].tolist() == [1] * 6


def test_trigger_token_of_the_run_is_one_vocabulary_token() -> None:
    cfg = parse_run_config({"dataset": "dbpedia_14", "model": "minilm"})
    trigger = run_trigger(cfg)
    from tracefl.text import get_tokenizer

    assert get_tokenizer("minilm").convert_ids_to_tokens(trigger.token_id) == "cf"
    bad = parse_run_config(
        {
            "dataset": "dbpedia_14",
            "model": "minilm",
            "backdoor-trigger-token": "zqxjkvw",
        }
    )
    with pytest.raises(ConfigError, match="'backdoor-trigger-token' = 'zqxjkvw'"):
        run_trigger(bad)


def test_poisoning_changes_exactly_the_drawn_fraction() -> None:
    features = torch.randn(40, 1, 28, 28)
    labels = torch.arange(40) % 10
    trigger = ImageTrigger(4, (9.0,))
    x, y, rows = poison_samples(features, labels, trigger, 7, 0.25, seed=3)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10
    again = poison_samples(features, labels, trigger, 7, 0.25, seed=3)[2]
    assert rows.tolist() == again.tolist()  # same seed, same samples
    for i in range(40):
        if i in rows:
            assert y[i] == 7
            assert torch.all(x[i, 0, -4:, -4:] == 9.0)
            assert torch.equal(x[i, 0, :24], features[i, 0, :24])
        else:
            assert y[i] == labels[i]
            assert torch.equal(x[i], features[i])
    assert torch.equal(labels, torch.arange(40) % 10)  # inputs untouched
    _, y_all, all_rows = poison_samples(features, labels, trigger, 7, 1.0, seed=0)
    assert len(all_rows) == 40 and (y_all == 7).all()


def test_poisoning_text_features() -> None:
    ids = torch.tensor([[101, 5, 102, 0]] * 4)
    feats = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    x, y, rows = poison_samples(
        feats, torch.zeros(4, dtype=torch.long), TokenTrigger(9), 3, 0.5, 1
    )
    assert len(rows) == 2
    for i in range(4):
        want = [101, 9, 5, 102] if i in rows else [101, 5, 102, 0]
        assert x["input_ids"][i].tolist() == want
        assert int(y[i]) == (3 if i in rows else 0)


def test_backdoor_label_map() -> None:
    assert backdoor_label_map(2, 4) == {0: 2, 1: 2, 3: 2}
    with pytest.raises(ValueError):
        backdoor_label_map(4, 4)


# -------------------------------------------------------------------- gaming


def _states(seed: int) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    prev = {
        "w": torch.randn(3, 4, generator=gen),
        "b": torch.randn(3, generator=gen),
        "stat": torch.randn(3, generator=gen),
        "count": torch.tensor(5),
    }
    trained = {
        k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 1
        for k, v in prev.items()
    }
    return prev, trained


@pytest.mark.parametrize(("rnd", "factor"), [(1, 4.0), (2, 4.0), (3, 0.25), (5, 0.25)])
def test_front_load_scales_the_update_before_and_after_the_start(
    rnd: int, factor: float
) -> None:
    prev, trained = _states(0)
    plan = GamingPlan("front-load", 4.0, start_round=3)
    sent = game_update(plan, rnd, prev, trained, {"w", "b"})
    for key in ("w", "b"):  # parameters: theta_prev + factor * Delta, literally
        for idx in np.ndindex(*prev[key].shape):
            want = prev[key][idx].item() + factor * (
                trained[key][idx].item() - prev[key][idx].item()
            )
            assert sent[key][idx].item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert torch.equal(sent["stat"], trained["stat"])  # buffers as trained
    assert torch.equal(sent["count"], trained["count"])


def test_sharpen_adds_the_output_layer_from_the_start_round() -> None:
    prev, trained = _states(1)
    plan = GamingPlan("sharpen", 0.5, start_round=2)
    early = game_update(plan, 1, prev, trained, {"w", "b"}, {"w", "b"})
    assert all(torch.equal(early[k], trained[k]) for k in trained)
    late = game_update(plan, 2, prev, trained, {"w", "b"}, {"w"})
    torch.testing.assert_close(late["w"], trained["w"] + 0.5 * prev["w"])
    assert torch.equal(late["b"], trained["b"])
    with pytest.raises(ValueError, match="output layer"):
        game_update(plan, 2, prev, trained, {"w"})


def test_sharpening_a_model_keeps_its_predictions_and_raises_confidence() -> None:
    torch.manual_seed(0)
    model = LeNet(1, 28, 10)
    keys = output_layer_keys(model, 10)
    assert keys == ("classifier.5.weight", "classifier.5.bias")
    prev = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n for n, _ in model.named_parameters()}
    # A client that did not train at all and only sharpens: theta = prev.
    sent = game_update(GamingPlan("sharpen", 1.0), 1, prev, prev, params, keys)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(sent)
        after = model(x)
    torch.testing.assert_close(after, 2 * before)  # logits doubled
    assert torch.equal(after.argmax(1), before.argmax(1))
    top = before.argmax(1, keepdim=True)
    gain = after.log_softmax(1).gather(1, top) - before.log_softmax(1).gather(1, top)
    assert (gain > 0).all()  # every prediction's log p goes up: credited


def test_played_update_uses_the_run_plan() -> None:
    cfg = parse_run_config(
        {
            "gaming-clients": "1",
            "gaming-strategy": "front-load",
            "gaming-strength": 2.0,
            "gaming-start-round": 2,
        }
    )
    assert gaming_plan(cfg, 0) is None
    plan = gaming_plan(cfg, 1)
    assert plan == GamingPlan("front-load", 2.0, 2)
    torch.manual_seed(0)
    model = LeNet(1, 28, 10)
    prev = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    sent = played_update(plan, 1, prev, model, cfg)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(sent[key], 2 * value)
    honest = parse_run_config({"gaming-clients": "1"})
    assert gaming_plan(honest, 1) is None  # strategy none: the honest baseline


def test_gaming_plan_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown gaming strategy"):
        GamingPlan("cheat", 1.0)
    with pytest.raises(ValueError, match="front-load: >= 1"):
        GamingPlan("front-load", 0.5)
    with pytest.raises(ValueError, match="no nn.Linear with 7 outputs"):
        output_layer_keys(LeNet(1, 28, 10), 7)


def test_config_strategy_names_match_the_transforms() -> None:
    assert GAMING_STRATEGIES == STRATEGIES


# -------------------------------------------------------------------- config


def test_adversarial_keys_parse() -> None:
    cfg = parse_run_config(
        {"backdoor-clients": "3,1", "gaming-clients": "2", "gaming-strategy": "sharpen"}
    )
    assert cfg.backdoor_client_ids == (1, 3) and cfg.backdoor_mode
    assert cfg.gaming_client_ids == (2,) and not cfg.faulty_mode


INVALID = [
    (
        {"backdoor-clients": "1", "backdoor-trigger-size": 29},
        "backdoor-trigger-size",
        "1..28",
    ),
    ({"backdoor-trigger-size": 0}, "backdoor-trigger-size", "fit the 28x28"),
    (
        {"dataset": "cifar10", "backdoor-trigger-size": 33},
        "backdoor-trigger-size",
        "1..32",
    ),
    ({"backdoor-target": 10}, "backdoor-target", "0..9"),
    ({"backdoor-target": -1}, "backdoor-target", "0..9"),
    ({"dataset": "pathmnist", "backdoor-target": 9}, "backdoor-target", "0..8"),
    ({"backdoor-fraction": 0.0}, "backdoor-fraction", "(0, 1]"),
    ({"backdoor-fraction": 1.5}, "backdoor-fraction", "(0, 1]"),
    ({"backdoor-clients": "a"}, "backdoor-clients", "partition ids"),
    ({"backdoor-clients": "1,1"}, "backdoor-clients", "repeat"),
    ({"num-clients": 10, "backdoor-clients": "10"}, "backdoor-clients", "0..9"),
    ({"num-clients": 2, "backdoor-clients": "0,1"}, "backdoor-clients", "honest"),
    (
        {"backdoor-clients": "1", "faulty-clients": "2", "label-flip": "1:0"},
        "backdoor-clients",
        "faulty-clients",
    ),
    ({"backdoor-trigger-token": "two words"}, "backdoor-trigger-token", "one word"),
    ({"gaming-strategy": "cheat"}, "gaming-strategy", "front-load"),
    ({"gaming-strategy": "sharpen"}, "gaming-clients", "partition ids"),
    ({"gaming-strength": 0.0}, "gaming-strength", "> 0"),
    (
        {
            "gaming-clients": "1",
            "gaming-strategy": "front-load",
            "gaming-strength": 0.5,
        },
        "gaming-strength",
        ">= 1",
    ),
    ({"gaming-start-round": 4, "num-server-rounds": 3}, "gaming-start-round", "1..3"),
    ({"num-clients": 4, "gaming-clients": "4"}, "gaming-clients", "0..3"),
    ({"secure-aggregation": "secagg"}, "secure-aggregation", "secaggplus"),
    (
        {"secure-aggregation": "secaggplus", "provenance": False},
        "secure-aggregation",
        "legacy",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "allowed"), INVALID)
def test_bad_adversarial_settings_fail_before_training(
    overrides: dict, key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config(overrides)
    message = str(info.value)
    assert f"'{key}'" in message
    assert allowed in message


def test_client_ids_are_checked_once_the_federation_is_known() -> None:
    cfg = parse_run_config({"backdoor-clients": "5", "gaming-clients": "1"})
    check_federation(cfg, 6)
    with pytest.raises(ConfigError, match="'backdoor-clients' = '5'.*0..4"):
        check_federation(cfg, 5)


# --------------------------------------------------------- secure aggregation


def test_secure_aggregation_with_provenance_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"secure-aggregation": "secaggplus"})
    message = str(info.value)
    assert "'secure-aggregation' = 'secaggplus'" in message
    assert "per-client provenance is impossible" in message
    for remedy in ("secure-aggregation = 'none'", "client-side", "trusted execution"):
        assert remedy in message


def test_record_name_is_flowers_secaggplus_record() -> None:
    assert SECAGGPLUS_RECORD == RECORD_KEY_CONFIGS


@pytest.mark.usefixtures("task_identity")
def test_a_masked_secaggplus_reply_is_rejected_with_the_reason() -> None:
    masked = RecordDict(
        {
            RECORD_KEY_CONFIGS: ConfigRecord(
                {"masked_params": [np.zeros(3, np.int64).tobytes()]}
            )
        }
    )
    msg = Message(content=masked, reply_to=train_request(107))
    with pytest.raises(ReplyRejectedError) as info:
        read_train_reply(msg, ArrayRecord(), 10)
    message = str(info.value)
    assert message.startswith("node 107: the reply carries SecAgg+ masked records")
    assert "per-client provenance is impossible" in message


def test_orthogonal_component_is_orthogonal_with_the_asked_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    update = torch.randn(50, generator=gen, dtype=torch.float64)
    directions = torch.randn(4, 50, generator=gen, dtype=torch.float64)
    directions[3] = directions[0] + directions[1]  # rank 3: still handled
    v = orthogonal_component(update, directions, 2.0, torch.Generator().manual_seed(1))
    assert v.norm().item() == pytest.approx(2.0 * update.norm().item())
    for d in directions:
        assert abs(float(v @ d)) <= 1e-9 * float(v.norm() * d.norm())
    again = orthogonal_component(
        update, directions, 2.0, torch.Generator().manual_seed(1)
    )
    assert torch.equal(v, again)


def test_class_gradient_directions_match_a_literal_oracle() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    )
    x = torch.randn(7, 3)
    y = torch.tensor([0, 2, 2, 0, 2, 0, 0])
    got = class_gradient_directions(model, x, y, num_classes=3)
    assert got.shape == (2, sum(p.numel() for p in model.parameters()))
    for row, c in zip(got, (0, 2), strict=True):
        total = [torch.zeros_like(p) for p in model.parameters()]
        members = [i for i in range(7) if int(y[i]) == c]
        for i in members:  # one sample at a time
            model.zero_grad()
            model(x[i : i + 1]).log_softmax(1)[0, c].backward()
            for t, p in zip(total, model.parameters(), strict=True):
                t += p.grad / len(members)
        want = torch.cat([t.reshape(-1) for t in total]).double()
        torch.testing.assert_close(row, want, rtol=1e-5, atol=1e-7)


def test_orthogonal_play_keeps_first_order_scores_of_typical_inputs() -> None:
    torch.manual_seed(0)
    model = LeNet(1, 28, 10)
    prev = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the "trained" model
    x, y = torch.randn(30, 1, 28, 28), torch.arange(30) % 3
    cfg = parse_run_config(
        {"gaming-clients": "0", "gaming-strategy": "orthogonal", "gaming-strength": 3.0}
    )
    plan = gaming_plan(cfg, 0)
    sent = played_update(plan, 1, prev, model, cfg, data=(x, y), partition_id=0)
    keys = [n for n, _ in model.named_parameters()]
    delta = torch.cat([(model.state_dict()[k] - prev[k]).reshape(-1) for k in keys])
    gamed = torch.cat([(sent[k] - prev[k]).reshape(-1) for k in keys])
    at_prev = LeNet(1, 28, 10)
    at_prev.load_state_dict(prev)
    g = class_gradient_directions(at_prev, x, y, 10).float()
    assert g.shape[0] == 3
    # <g_c, Delta'> = <g_c, Delta> for every class: first-order scores unchanged ...
    torch.testing.assert_close(g @ gamed, g @ delta, rtol=1e-3, atol=1e-6)
    # ... while the update grew by the strength (a random, orthogonal component).
    extra = (gamed - delta).norm() / delta.norm()
    assert float(extra) == pytest.approx(3.0, rel=1e-3)
