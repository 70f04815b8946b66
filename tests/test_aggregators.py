"""Every aggregator's decomposition reproduces Flower's own aggregate.

Real rounds: Flower's ``configure_train`` -> clients train a real model for a
step from the arrays they were sent -> Flower's ``aggregate_train`` on reply
Messages. The decomposition ``sum_k A_k * theta_k + r`` (built into a
:class:`FusedRound`) must equal Flower's aggregate to <= 1e-6 relative, over
several rounds (server momentum / optimiser state non-trivial), for odd and even
``K``, with tied values (duplicate clients, all-equal coordinates, a coarsely
quantised layer) and with BatchNorm's integer buffer in the replies.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedYogi,
    Strategy,
)
from flwr.serverapp.strategy.multikrum import select_multikrum
from torch import Tensor, nn

from tracefl.aggregators import AGGREGATORS, get_aggregator, sampling_arguments
from tracefl.aggregators.base import Aggregator
from tracefl.aggregators.multikrum import selected_clients
from tracefl.attribution import FusedRound
from tracefl.config import TraceFLConfig, parse_run_config
from tracefl.model import LeNet

pytestmark = pytest.mark.usefixtures("task_identity", "one_torch_thread")

TOLERANCE = 1e-6
ROUNDS = 3


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Fast rounds: one torch thread, and a frozen import-time heap for ``gc``.

    Tiny models train ~20x faster on one thread on a shared 2-core machine;
    Flower's Bulyan calls ``gc.collect()`` once per reply, which scans the whole
    heap (~0.2-0.7 s each here) unless the long-lived objects are frozen.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.freeze()
    yield
    gc.unfreeze()
    torch.set_num_threads(previous)


class NodeGrid:
    """The one Grid method ``configure_train`` calls: the connected node ids."""

    def __init__(self, num_nodes: int) -> None:
        self.node_ids = list(range(101, 101 + num_nodes))

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def lenet() -> nn.Module:
    return LeNet(channels=1, image_size=16, num_classes=4)


def bn_net() -> nn.Module:
    """A small CNN with BatchNorm: its ``num_batches_tracked`` is an int64 entry."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 14 * 14, 4),
    )


def config(fusion: str, num_clients: int, **extra: Any) -> TraceFLConfig:
    return parse_run_config(
        {
            "fusion": fusion,
            "num-clients": num_clients,
            "min-train-nodes": num_clients,
            "min-available-nodes": num_clients,
            "fraction-train": 1.0,
            **extra,
        }
    )


def train_client(
    make_model: Callable[[], nn.Module], sent: Mapping[str, Tensor], seed: int
) -> dict[str, Tensor]:
    """A real client: load the sent global, take ``1 + seed % 3`` SGD steps."""
    model = make_model()
    model.load_state_dict(dict(sent))  # casts Flower's float64 entries back
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(1 + seed % 3):
        x = torch.randn(8, 1, 16, 16, generator=gen) + 0.3 * (seed % 4)
        y = torch.randint(0, 4, (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for v in state.values():  # batches seen: client data sizes differ (BatchNorm)
        if not v.is_floating_point():
            v += (7 * seed) % 11
    return state


def add_ties(
    clients: list[dict[str, Tensor]], sent: Mapping[str, Tensor], seed: int
) -> None:
    """Duplicate values: a copied client entry, all-equal coordinates, a grid."""
    keys = [k for k, v in clients[0].items() if v.is_floating_point()]
    first, grid, last = keys[0], keys[1], keys[-1]
    if len(clients) > 1:  # two clients tie on a whole entry
        clients[1][last] = clients[0][last].clone()
    gen = torch.Generator().manual_seed(seed)
    for c in clients:
        # Every client equal to the previous model on a few weights.
        c[first].view(-1)[:3] = sent[first].view(-1)[:3].to(c[first].dtype)
        # One entry on a coarse grid around the previous model: many ties, and
        # distinct values equidistant from the median (Bulyan's tie-break).
        steps = torch.randint(-2, 3, c[grid].shape, generator=gen)
        c[grid] = sent[grid].to(c[grid].dtype) + 0.125 * steps.to(c[grid].dtype)


def reply(request: Message, state: Mapping[str, Tensor], n: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: v.clone() for k, v in state.items()}),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0}),
        }
    )
    return Message(content=content, reply_to=request)


def relative_error(got: Mapping[str, Tensor], want: Mapping[str, Tensor]) -> float:
    """Max over keys of ``max|got - want| / max|want|``."""
    return max(
        float((got[k] - want[k].double()).abs().max())
        / max(float(want[k].double().abs().max()), 1e-30)
        for k in want
    )


class Recorder(Strategy):
    """What the provenance wrapper does, between a DP wrapper and the strategy.

    Copies the replies' arrays as the strategy receives them (after any DP
    clipping; FedMedian, FedTrimmedAvg and Bulyan empty them while aggregating)
    and snapshots the aggregator's server state, then delegates to Flower.
    """

    def __init__(self, inner: Strategy, aggregator: Aggregator) -> None:
        self.inner, self.aggregator = inner, aggregator
        self.received: list[list[dict[str, Tensor]]] = []
        self.before: list[object | None] = []

    def configure_train(self, *args: Any) -> Any:
        return self.inner.configure_train(*args)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        self.received.append(
            [r.content["arrays"].to_torch_state_dict() for r in replies]
        )
        self.before.append(self.aggregator.snapshot(self.inner))
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, *args: Any) -> Any:
        return self.inner.configure_evaluate(*args)

    def aggregate_evaluate(self, *args: Any) -> Any:
        return self.inner.aggregate_evaluate(*args)

    def summary(self) -> None:
        self.inner.summary()


@dataclass
class Round:
    fused: FusedRound
    strategy: Strategy
    aggregate: dict[str, Tensor]


def run_rounds(
    aggregator: Aggregator,
    cfg: TraceFLConfig,
    make_model: Callable[[], nn.Module] = lenet,
    rounds: int = ROUNDS,
    ties: bool = True,
    wrap: Callable[[Strategy], Strategy] | None = None,
) -> list[Round]:
    """Drive Flower's strategy through real rounds; decompose each one."""
    torch.manual_seed(0)
    inner = aggregator.build(cfg, sampling_arguments(cfg))
    recorder = Recorder(inner, aggregator)
    strategy = recorder if wrap is None else wrap(recorder)
    grid = NodeGrid(cfg.num_clients)
    arrays = ArrayRecord(make_model().state_dict())
    out = []
    for rnd in range(1, rounds + 1):
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        sent = messages[0].content["arrays"].to_torch_state_dict()
        clients = [
            train_client(make_model, sent, seed=10 * rnd + k)
            for k in range(len(messages))
        ]
        if ties:
            add_ties(clients, sent, seed=rnd)
        sizes = [20 + 7 * k for k in range(len(messages))]
        replies = [
            reply(m, c, n) for m, c, n in zip(messages, clients, sizes, strict=True)
        ]
        agg, _ = strategy.aggregate_train(rnd, replies)
        assert agg is not None
        got, before = recorder.received[-1], recorder.before[-1]
        shares, residual = aggregator.decompose(inner, rnd, before, got, sizes)
        keys = list(residual)
        aggregate = agg.to_torch_state_dict()
        fused = FusedRound(
            server_round=rnd,
            aggregator=aggregator.name,
            client_ids=tuple(f"client-{k}" for k in range(len(got))),
            num_examples=tuple(sizes),
            previous={k: sent[k] for k in keys},
            clients=tuple({k: c[k] for k in keys} for c in got),
            aggregate={k: aggregate[k] for k in keys},
            shares=shares,
            residual=residual,
        )
        out.append(Round(fused, inner, aggregate))
        arrays = agg  # as Strategy.start: the next round starts from the aggregate
    return out


# (fusion, extra run config, K values): odd and even K for each.
CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("fedavg", {}, (3, 4)),
    ("fedprox", {"proximal-mu": 0.1}, (3, 4)),
    ("fedavgm", {}, (3, 4)),
    ("fedavgm", {"server-learning-rate": 0.7, "server-momentum": 0.5}, (3,)),
    ("fedavgm", {"server-learning-rate": 1.0, "server-momentum": 0.0}, (4,)),
    ("fedadam", {}, (3, 4)),
    ("fedadam", {"eta": 0.1, "beta-1": 0.5, "beta-2": 0.9, "tau": 1e-4}, (5,)),
    ("fedyogi", {}, (3, 4)),
    ("fedyogi", {"eta": 0.1, "beta-1": 0.0}, (5,)),
    ("fedadagrad", {}, (3, 4)),
    ("fedadagrad", {"eta": 0.1, "tau": 1e-2}, (5,)),
    ("fedmedian", {}, (1, 2, 5, 6)),
    ("fedtrimmedavg", {}, (5, 6)),
    ("fedtrimmedavg", {"trim-beta": 0.4}, (5, 6)),
    ("fedtrimmedavg", {"trim-beta": 0.0}, (3,)),
    ("krum", {"num-malicious-nodes": 1}, (5, 6)),
    ("krum", {}, (3,)),
    ("multikrum", {"num-malicious-nodes": 1, "num-nodes-to-select": 3}, (5, 6)),
    ("bulyan", {"num-malicious-nodes": 1}, (7, 8)),
    ("bulyan", {}, (3,)),
]
PARAMS = [
    pytest.param(
        fusion, extra, k, id=f"{fusion}-{k}-{'-'.join(map(str, extra.values()))}"
    )
    for fusion, extra, ks in CASES
    for k in ks
]


def test_cases_cover_every_registered_aggregator() -> None:
    assert {fusion for fusion, _, _ in CASES} == set(AGGREGATORS)


@pytest.mark.parametrize(("fusion", "extra", "num_clients"), PARAMS)
def test_reconstruction_equals_flowers_aggregate(
    fusion: str, extra: dict[str, Any], num_clients: int
) -> None:
    cfg = config(fusion, num_clients, **extra)
    for rnd in run_rounds(get_aggregator(fusion), cfg):
        err = relative_error(rnd.fused.reconstruct(), rnd.fused.aggregate)
        assert err <= TOLERANCE, (rnd.fused.server_round, err)


def share_sum(fused: FusedRound, key: str) -> Tensor:
    shape = fused.previous[key].shape
    return sum(s[key].double().expand(shape) for s in fused.shares)


@pytest.mark.parametrize(
    ("fusion", "extra", "num_clients"),
    [
        ("fedavg", {}, 3),
        ("fedmedian", {}, 4),
        ("fedmedian", {}, 5),
        ("fedtrimmedavg", {}, 6),
        ("krum", {"num-malicious-nodes": 1}, 5),
        ("multikrum", {"num-malicious-nodes": 1, "num-nodes-to-select": 3}, 6),
        ("bulyan", {"num-malicious-nodes": 1}, 7),
    ],
)
def test_averaging_aggregators_shares_sum_to_one_and_residual_is_zero(
    fusion: str, extra: dict[str, Any], num_clients: int
) -> None:
    for rnd in run_rounds(get_aggregator(fusion), config(fusion, num_clients, **extra)):
        for key in rnd.fused.previous:
            torch.testing.assert_close(
                share_sum(rnd.fused, key),
                torch.ones(rnd.fused.previous[key].shape, dtype=torch.float64),
                rtol=0,
                atol=1e-12,
            )
            assert not rnd.fused.residual[key].any()
            assert all(bool((s[key] >= 0).all()) for s in rnd.fused.shares)


def test_fedavg_shares_are_the_data_shares() -> None:
    (rnd,) = run_rounds(get_aggregator("fedavg"), config("fedavg", 3), rounds=1)
    for share, pk in zip(rnd.fused.shares, rnd.fused.data_share, strict=True):
        assert all(
            s.dim() == 0 and float(s) == pytest.approx(pk) for s in share.values()
        )


def test_krum_is_one_hot_and_multikrum_weights_the_selected_by_data() -> None:
    rounds = run_rounds(
        get_aggregator("krum"), config("krum", 5, **{"num-malicious-nodes": 1})
    )
    for rnd in rounds:
        key = next(iter(rnd.fused.previous))
        assert sorted(float(s[key]) for s in rnd.fused.shares) == [0, 0, 0, 0, 1]
    extra = {"num-malicious-nodes": 1, "num-nodes-to-select": 3}
    for rnd in run_rounds(get_aggregator("multikrum"), config("multikrum", 6, **extra)):
        key = next(iter(rnd.fused.previous))
        weights = [float(s[key]) for s in rnd.fused.shares]
        chosen = [k for k, w in enumerate(weights) if w > 0]
        assert len(chosen) == 3
        total = sum(rnd.fused.num_examples[k] for k in chosen)
        for k in chosen:
            assert weights[k] == pytest.approx(rnd.fused.num_examples[k] / total)


def test_fedavgm_and_fedopt_share_sums_are_the_server_gain() -> None:
    extra = {"server-learning-rate": 0.7, "server-momentum": 0.5}
    for rnd in run_rounds(get_aggregator("fedavgm"), config("fedavgm", 3, **extra)):
        for key in rnd.fused.previous:
            assert float(share_sum(rnd.fused, key).max()) == pytest.approx(0.7)
    cfg = config("fedyogi", 3, eta=0.05)
    last = run_rounds(get_aggregator("fedyogi"), cfg)[-1]  # v_t is the last round's
    assert isinstance(last.strategy, FedYogi)
    v_t = last.strategy.v_t
    assert v_t is not None
    for rnd in (last,):
        for key in rnd.fused.previous:
            gain = 0.05 / (torch.from_numpy(np.sqrt(v_t[key])).double() + cfg.tau)
            torch.testing.assert_close(
                share_sum(rnd.fused, key), gain * (1 - cfg.beta_1), rtol=1e-6, atol=0
            )


@pytest.mark.parametrize("fusion", ["fedmedian", "fedtrimmedavg"])
def test_order_statistic_shares_follow_the_clients_not_the_reply_order(
    fusion: str,
) -> None:
    aggregator = get_aggregator(fusion)
    cfg = config(fusion, 6)
    (rnd,) = run_rounds(aggregator, cfg, rounds=1)
    clients = list(rnd.fused.clients)
    order = [3, 0, 5, 1, 4, 2]
    permuted = [clients[k] for k in order]
    sizes = [rnd.fused.num_examples[k] for k in order]
    shares, _ = aggregator.decompose(rnd.strategy, 1, None, permuted, sizes)
    for new, old in enumerate(order):
        for key in rnd.fused.previous:
            assert torch.equal(shares[new][key], rnd.fused.shares[old][key])


@pytest.mark.parametrize(
    ("fusion", "extra", "num_clients"),
    [
        ("fedavg", {}, 3),
        ("fedadam", {}, 3),
        ("fedmedian", {}, 4),
        ("krum", {"num-malicious-nodes": 1}, 6),
        ("bulyan", {"num-malicious-nodes": 1}, 7),
    ],
)
def test_integer_buffers_take_part_in_flowers_selection_not_in_the_shares(
    fusion: str, extra: dict[str, Any], num_clients: int
) -> None:
    """BatchNorm's int64 ``num_batches_tracked`` (it differs per client here)."""
    cfg = config(fusion, num_clients, **extra)
    rounds = run_rounds(get_aggregator(fusion), cfg, make_model=bn_net)
    for rnd in rounds:
        assert "1.num_batches_tracked" not in rnd.fused.previous
        err = relative_error(rnd.fused.reconstruct(), rnd.fused.aggregate)
        assert err <= TOLERANCE, (rnd.fused.server_round, err)


def test_krum_selection_depends_on_integer_buffers() -> None:
    """Why ``decompose`` takes all entries: without the int buffer Flower's
    Krum would have picked another client in some round of this fixture."""
    f = 1
    cfg = config("krum", 6, **{"num-malicious-nodes": f})
    differs = 0
    for rnd in run_rounds(get_aggregator("krum"), cfg, make_model=bn_net):
        # rnd.fused.clients hold the floating entries only.
        floating_only = selected_clients(select_multikrum, rnd.fused.clients, f, 1)
        chosen = [k for k, s in enumerate(rnd.fused.shares) if float(s["4.bias"]) == 1]
        differs += chosen != floating_only
    assert differs >= 1


# --------------------------------------------------------------- literal oracle
def literal_window_shares(values: Tensor, low: int, high: int) -> Tensor:
    """Coordinate by coordinate in Python: split each kept value among holders."""
    num = values.shape[0]
    flat = values.reshape(num, -1)
    out = torch.zeros(flat.shape, dtype=torch.float64)
    for j in range(flat.shape[1]):
        column = [float(v) for v in flat[:, j]]
        window = sorted(column)[low:high]
        for k, value in enumerate(column):
            kept = sum(1 for w in window if w == value)
            holders = sum(1 for v in column if v == value)
            out[k, j] = kept / ((high - low) * holders)
    return out.reshape(values.shape)


@pytest.mark.parametrize(
    ("num", "low", "high"), [(5, 2, 3), (6, 2, 4), (7, 1, 6), (4, 0, 4), (1, 0, 1)]
)
def test_rank_window_shares_equal_the_literal_oracle(
    num: int, low: int, high: int
) -> None:
    from tracefl.aggregators.ranks import rank_window_shares

    gen = torch.Generator().manual_seed(num)
    values = torch.randint(-2, 3, (num, 5, 7), generator=gen).float()  # many ties
    values[:, 0, 0] = 1.0  # one coordinate where every client ties
    got = rank_window_shares(values, low, high)
    torch.testing.assert_close(
        got, literal_window_shares(values, low, high), rtol=0, atol=1e-15
    )
    window_mean = values.double().sort(dim=0).values[low:high].mean(dim=0)
    torch.testing.assert_close((got * values.double()).sum(0), window_mean)


def test_median_ties_split_the_value_among_its_holders() -> None:
    from tracefl.aggregators.ranks import rank_window_shares

    # Even K: middle values 1 (held by clients 0 and 1) and 2 (client 2).
    values = torch.tensor([[1.0], [1.0], [2.0], [3.0]])
    shares = rank_window_shares(values, 1, 3)
    assert shares.flatten().tolist() == [0.25, 0.25, 0.5, 0.0]


# --------------------------------------------------------------- DP composability
DP_CASES = [
    ("fedavg", {}, 3),
    ("fedprox", {}, 3),
    ("fedavgm", {}, 3),
    ("fedadam", {}, 3),
    ("fedyogi", {}, 3),
    ("fedadagrad", {}, 3),
    ("fedmedian", {}, 4),
    ("fedtrimmedavg", {}, 5),
    ("krum", {"num-malicious-nodes": 1}, 5),
    ("multikrum", {"num-malicious-nodes": 1, "num-nodes-to-select": 3}, 5),
    ("bulyan", {"num-malicious-nodes": 1}, 7),
]


def server_dp(noise: float, clip: float, num: int) -> Callable[[Strategy], Strategy]:
    def wrap(inner: Strategy) -> Strategy:
        return DifferentialPrivacyServerSideFixedClipping(inner, noise, clip, num)

    return wrap


@pytest.mark.parametrize(("fusion", "extra", "num_clients"), DP_CASES)
def test_server_side_dp_wraps_every_aggregator(
    fusion: str, extra: dict[str, Any], num_clients: int
) -> None:
    """Clipped replies decompose exactly; the only leftover is DP's noise."""
    clip = 0.5  # well below the clients' update norms: every update is clipped
    cfg = config(fusion, num_clients, **extra)
    exact = run_rounds(
        get_aggregator(fusion), cfg, rounds=2, wrap=server_dp(0.0, clip, num_clients)
    )
    for rnd in exact:
        err = relative_error(rnd.fused.reconstruct(), rnd.fused.aggregate)
        assert err <= TOLERANCE, (rnd.fused.server_round, err)
        for update in rnd.fused.updates():
            norm = torch.sqrt(sum((u**2).sum() for u in update.values()))
            assert float(norm) <= clip * (1 + 1e-5)
    noise = 0.3
    noisy = run_rounds(
        get_aggregator(fusion), cfg, rounds=2, wrap=server_dp(noise, clip, num_clients)
    )
    for rnd in noisy:
        recon = rnd.fused.reconstruct()
        left = torch.cat(
            [(rnd.fused.aggregate[k].double() - recon[k]).flatten() for k in recon]
        )
        assert float(left.std()) == pytest.approx(noise * clip / num_clients, rel=0.05)


@pytest.mark.parametrize(("fusion", "extra", "num_clients"), DP_CASES)
def test_client_side_dp_wraps_every_aggregator(
    fusion: str, extra: dict[str, Any], num_clients: int
) -> None:
    """Clients clip (``fixedclipping_mod``); the server only adds the noise."""
    noise, clip = 0.3, 2.0
    cfg = config(fusion, num_clients, **extra)

    def wrap(inner: Strategy) -> Strategy:
        return DifferentialPrivacyClientSideFixedClipping(
            inner, noise, clip, num_clients
        )

    for rnd in run_rounds(get_aggregator(fusion), cfg, rounds=2, wrap=wrap):
        recon = rnd.fused.reconstruct()
        left = torch.cat(
            [(rnd.fused.aggregate[k].double() - recon[k]).flatten() for k in recon]
        )
        assert float(left.std()) == pytest.approx(noise * clip / num_clients, rel=0.05)


def test_server_dp_replaces_each_replys_arrays_with_a_clipped_copy() -> None:
    """Facts the provenance wrapper relies on (Flower 1.42's fixed-clipping DP)."""
    cfg = config("fedmedian", 3)
    strategy = DifferentialPrivacyServerSideFixedClipping(
        get_aggregator("fedmedian").build(cfg, sampling_arguments(cfg)), 0.0, 0.1, 3
    )
    assert isinstance(strategy.strategy, FedMedian)
    sent_state = lenet().state_dict()
    messages = list(
        strategy.configure_train(
            1, ArrayRecord(sent_state), ConfigRecord(), NodeGrid(3)
        )
    )
    states = [train_client(lenet, sent_state, seed=k) for k in range(3)]
    replies = [reply(m, s, 10) for m, s in zip(messages, states, strict=True)]
    originals = [r.content["arrays"] for r in replies]
    strategy.aggregate_train(1, replies)
    for r, original, state in zip(replies, originals, states, strict=True):
        # The Message now holds a new ArrayRecord (the clipped copy), which
        # FedMedian emptied while aggregating; the original record is untouched.
        assert r.content["arrays"] is not original
        assert len(r.content["arrays"]) == 0
        torch.testing.assert_close(original.to_torch_state_dict(), state)


def test_decompose_names_the_culprit() -> None:
    aggregator = get_aggregator("fedavg")
    strategy = aggregator.build(config("fedavg", 2), {})
    good = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"clients\[1\]\['w'\] has non-finite"):
        aggregator.decompose(
            strategy,
            1,
            None,
            [good, {**good, "w": torch.full((2, 3), float("nan"))}],
            [1, 1],
        )
    with pytest.raises(ValueError, match=r"clients\[1\]\['b'\] has shape"):
        aggregator.decompose(
            strategy, 1, None, [good, {**good, "b": torch.zeros(4)}], [1, 1]
        )
    with pytest.raises(ValueError, match=r"num_examples\[0\]"):
        aggregator.decompose(strategy, 1, None, [good, good], [0, 1])
    with pytest.raises(ValueError, match="2 clients"):
        aggregator.decompose(strategy, 1, None, [good, good], [1])
    fedadam = get_aggregator("fedadam")
    with pytest.raises(TypeError, match="ServerOptimizerState"):
        fedadam.decompose(fedadam.build(config("fedadam", 2), {}), 1, None, [good], [1])
