"""Fed-Influence, server side: Eq. 15 recursion, FIP estimator (Eq. 10-11), LWET."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.fedinfluence_fixtures import TinyNet, fedavg_round, tiny_data
from tracefl.attribution import FusedRound
from tracefl.fedinfluence import (
    FedInfluence,
    FedInfluenceDivergedError,
    FedInfluenceSettings,
    GradientPayload,
    LocalSGD,
    PayloadError,
    propagate,
)


def dense_jacobians(grads: Tensor, offsets: Tensor, sgd: LocalSGD) -> Tensor:
    """Literal product of the local steps' Jacobians on ``[sigma; nu; epsilon]``.

    Step ``i``: ``D = H~_i + (lambda + rho) I`` with ``H~_i = G_i^T G_i / S_i``,
    ``nu' = mu nu + D sigma - rho eps``, ``sigma' = sigma - eta nu'``; with
    ``mu = lambda = rho = 0`` the top-left block is ``prod (I - eta H~_i)``.
    """
    p = grads.shape[1]
    eye = torch.eye(p, dtype=torch.float64)
    zero = torch.zeros(p, p, dtype=torch.float64)
    eta, mu, rho = sgd.lr, sgd.momentum, sgd.proximal_mu
    total = torch.eye(3 * p, dtype=torch.float64)
    bounds = offsets.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        g = grads[lo:hi].double()
        d = g.T @ g / (hi - lo) + (sgd.weight_decay + rho) * eye
        step = torch.cat(
            [
                torch.cat([eye - eta * d, -eta * mu * eye, eta * rho * eye], 1),
                torch.cat([d, mu * eye, -rho * eye], 1),
                torch.cat([zero, zero, eye], 1),
            ]
        )
        total = step @ total
    return total


def start_vector(epsilon: Tensor) -> Tensor:
    return torch.cat([epsilon, torch.zeros_like(epsilon), epsilon])


@pytest.mark.parametrize(
    "sgd",
    [LocalSGD(0.3), LocalSGD(0.2, momentum=0.9, weight_decay=0.05, proximal_mu=0.3)],
    ids=["eq15", "momentum-wd-prox"],
)
def test_propagate_equals_the_explicit_jacobian_product(sgd: LocalSGD) -> None:
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(11, 7, generator=gen)
    offsets = torch.tensor([0, 4, 5, 9, 11])
    eps = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    dense = dense_jacobians(grads, offsets, sgd)
    want = torch.stack([(dense @ start_vector(e))[:7] for e in eps])
    assert torch.allclose(propagate(eps, grads, offsets, sgd), want, atol=1e-12)
    if sgd.momentum == 0:  # Eq. 14: prod_i (I - eta H~_i) epsilon
        product = torch.eye(7, dtype=torch.float64)
        for lo, hi in [(0, 4), (4, 5), (5, 9), (9, 11)]:
            g = grads[lo:hi].double()
            product = (
                torch.eye(7, dtype=torch.float64) - sgd.lr * g.T @ g / (hi - lo)
            ) @ product
        assert torch.allclose(propagate(eps, grads, offsets, sgd), eps @ product.T)


def flat(state: dict[str, Tensor], keys) -> Tensor:
    return torch.cat([state[k].reshape(-1).double() for k in keys])


def combinatorial(fused: FusedRound, c: str, key: str) -> Tensor:
    """Literal ``w_t(C_t -> C_t - {c}) - w_t`` (Eq. 4 minus Eq. 3)."""
    ids = list(fused.client_ids)
    if c not in ids:
        return torch.zeros(fused.previous[key].shape, dtype=torch.float64)
    rest = [i for i, k in enumerate(ids) if k != c]
    n = sum(fused.num_examples[i] for i in rest)
    without = sum(
        fused.num_examples[i] / n * fused.clients[i][key].double() for i in rest
    )
    return without - fused.aggregate[key].double()


@pytest.mark.parametrize(
    "sgd",
    [LocalSGD(0.2), LocalSGD(0.1, momentum=0.9, weight_decay=0.01, proximal_mu=0.1)],
    ids=["eq15", "momentum-wd-prox"],
)
def test_round_update_equals_the_explicit_products_on_a_real_model(sgd) -> None:
    """Eq. 10-11 on real sampled gradients, against dense (I - eta H~) products."""
    torch.manual_seed(0)
    model = TinyNet()
    settings = FedInfluenceSettings(("features.0", "classifier.4"), 5, lwet=False)
    data = [tiny_data(i, 10 + 3 * i) for i in range(4)]
    estimator = FedInfluence(model, settings)
    fused, payloads, model = fedavg_round(model, data, [0, 1, 2, 3], settings, sgd, 1)
    estimator.update(fused, payloads)
    before = estimator.parameter_influence()
    fused, payloads, model = fedavg_round(model, data, [1, 2, 3], settings, sgd, 2)
    estimator.update(fused, payloads)
    after = estimator.parameter_influence()
    assert estimator.client_ids == ("c0", "c1", "c2", "c3")
    for c in estimator.client_ids:
        for key in fused.previous:
            comb = combinatorial(fused, c, key)
            if key not in estimator.tracked:  # Eq. 13 for untracked blocks
                assert torch.allclose(after[c][key], comb, atol=1e-6), (c, key)
                continue
            others = [k for k in fused.client_ids if k != c]
            n = sum(fused.num_examples[fused.client_ids.index(k)] for k in others)
            seq = torch.zeros(comb.numel(), dtype=torch.float64)
            for k in others:
                p = payloads[k]
                dense = dense_jacobians(p.grads[key], p.offsets, p.sgd)
                moved = (dense @ start_vector(before[c][key].reshape(-1)))[
                    : comb.numel()
                ]
                seq += fused.num_examples[fused.client_ids.index(k)] / n * moved
            want = seq.reshape(comb.shape) + comb
            assert torch.allclose(after[c][key], want, atol=1e-6), (c, key)
    # c0 sat out round 2 but its estimator still moved through M_t^{-c0}.
    key = "classifier.4.weight"
    assert not torch.allclose(after["c0"][key], before["c0"][key])


# --------------------------------------------------------------- exactness
D = 4


def quadratic_round(
    w: Tensor,
    data: dict[str, tuple[Tensor, Tensor]],
    participants: list[str],
    sgd: LocalSGD,
    noise: Tensor,
    epochs: int = 2,
    batch: int = 3,
) -> tuple[Tensor, list[Tensor], dict[str, GradientPayload]]:
    """Literal FedAvg round of PyTorch-SGD on ``1/2 (w.x - y)^2`` (float64).

    Payload rows are the inputs ``x``: ``1/S sum x x^T`` is the exact Hessian of
    the step's mini-batch loss, so the Fisher approximation is exact here.
    """
    if not participants:
        return w, [], {}
    clients, payloads = [], {}
    for c in participants:
        x, y = data[c]
        local, velocity, rows, offsets = w.clone(), None, [], [0]
        for _ in range(epochs):
            for lo in range(0, len(y), batch):
                xb, yb = x[lo : lo + batch].double(), y[lo : lo + batch]
                g = xb.T @ (xb @ local - yb) / len(yb)
                g = g + sgd.weight_decay * local + sgd.proximal_mu * (local - w)
                velocity = g if velocity is None else sgd.momentum * velocity + g
                local = local - sgd.lr * velocity
                rows.append(x[lo : lo + batch])
                offsets.append(offsets[-1] + len(yb))
        clients.append(local)
        payloads[c] = GradientPayload(
            {"0.weight": torch.cat(rows)}, torch.tensor(offsets), sgd
        )
    n = [len(data[c][1]) for c in participants]
    aggregate = sum(nk / sum(n) * wk for nk, wk in zip(n, clients, strict=True))
    return aggregate + noise, clients, payloads


def exactness_federation() -> tuple[dict, list[list[str]], list[Tensor]]:
    gen = torch.Generator().manual_seed(7)
    data = {}
    for i, n in enumerate([5, 7, 4, 6]):
        x = torch.randn(n, D, generator=gen)  # float32: payload rows are exact
        y = x.double() @ torch.randn(D, generator=gen, dtype=torch.float64) + i
        data[f"c{i}"] = (x, y)
    schedule = [["c0", "c1", "c2"], ["c1", "c3"], ["c2"], ["c0", "c1", "c2", "c3"]]
    noise = [
        0.01 * torch.randn(D, generator=gen, dtype=torch.float64) for _ in schedule
    ]
    return data, schedule, noise


def run_quadratic(data, schedule, noise, sgd, without=None, estimator=None) -> Tensor:
    w = torch.linspace(-1, 1, D, dtype=torch.float64)
    for t, (members, r) in enumerate(zip(schedule, noise, strict=True), start=1):
        members = [c for c in members if c != without]
        new, clients, payloads = quadratic_round(w, data, members, sgd, r)
        if estimator is not None:
            fused = FusedRound.weighted_average(
                t,
                "fedavg",
                members,
                [len(data[c][1]) for c in members],
                {"0.weight": w.reshape(1, D)},
                [{"0.weight": wk.reshape(1, D)} for wk in clients],
                {"0.weight": new.reshape(1, D)},
                noise={"0.weight": r.reshape(1, D)},
            )
            estimator.update(fused, payloads)
        w = new
    return w


@pytest.mark.parametrize(
    ("sgd", "lwet"),
    [
        (LocalSGD(0.1), False),
        (LocalSGD(0.1), True),  # contractive: LWET never truncates
        (LocalSGD(0.05, momentum=0.8, weight_decay=0.1, proximal_mu=0.5), False),
    ],
    ids=["eq15", "eq15-lwet", "momentum-wd-prox"],
)
def test_estimator_equals_leave_one_out_retraining_on_a_quadratic_loss(sgd, lwet):
    """With an exact Hessian factor and a quadratic loss, Eq. 8 is exact.

    The federation has partial participation, a round whose only participant is
    ``c2`` (removing it leaves the round without update), clients that sit out
    rounds (their estimator still moves through M_t^{-c}), unequal ``n_k``,
    mini-batches of unequal size, and DP-like noise kept in the counterfactual.
    """
    data, schedule, noise = exactness_federation()
    model = nn.Sequential(nn.Linear(D, 1, bias=False))
    estimator = FedInfluence(model, FedInfluenceSettings(("0",), lwet=lwet))
    full = run_quadratic(data, schedule, noise, sgd, estimator=estimator)
    fip = estimator.parameter_influence()
    assert estimator.truncated_blocks() == {c: {} for c in data}
    for c in data:
        truth = run_quadratic(data, schedule, noise, sgd, without=c) - full
        assert truth.norm() > 1e-3
        assert torch.allclose(fip[c]["0.weight"].reshape(-1), truth, atol=1e-11), c


# -------------------------------------------------------------------- LWET
def hand_round(t, previous, deltas, payload_rows, lr=1.0) -> tuple:
    """A FedAvg round with given updates and one-iteration gradient payloads."""
    ids = list(deltas)
    clients = [{k: previous[k] + deltas[c][k] for k in previous} for c in ids]
    aggregate = {k: sum(cl[k] for cl in clients) / len(ids) for k in previous}
    fused = FusedRound.weighted_average(
        t, "fedavg", ids, [1] * len(ids), previous, clients, aggregate
    )
    payloads = {
        c: GradientPayload(
            {k: v.reshape(1, -1) for k, v in payload_rows.items()},
            torch.tensor([0, 1]),
            LocalSGD(lr),
        )
        for c in ids
    }
    return fused, payloads, aggregate


def test_lwet_truncates_a_divergent_block_for_good_and_keeps_the_others():
    """Block ``0.weight`` has ``I - eta g g^T`` with eigenvalue -2 along e1.

    Round 1 gives every client an estimator; in round 2 (c0 sits out) the
    estimator of c0 on ``0.weight`` has an e1 component and grows: LWET truncates
    it from round 2 on (Eq. 13), while its contractive ``0.bias`` block and c2's
    ``0.weight`` (no e1 component: ``||M eps|| = ||eps||``) keep the recursion.
    Round 3 is contractive, but the truncation stays.
    """
    model = nn.Sequential(nn.Linear(2, 1))
    w0 = {"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1)}
    deltas = {
        "c0": {"0.weight": torch.tensor([[1.0, 0.3]]), "0.bias": torch.tensor([0.5])},
        "c1": {"0.weight": torch.tensor([[-1.0, 0.1]]), "0.bias": torch.tensor([0.2])},
        "c2": {"0.weight": torch.tensor([[0.0, -0.4]]), "0.bias": torch.tensor([-0.1])},
    }
    divergent = {
        "0.weight": torch.tensor([3.0**0.5, 0.0]),
        "0.bias": torch.tensor([0.5]),
    }
    calm = {"0.weight": torch.tensor([0.5, 0.0]), "0.bias": torch.tensor([0.5])}

    def run(lwet: bool) -> tuple[FedInfluence, list[dict]]:
        est = FedInfluence(model, FedInfluenceSettings(("0",), lwet=lwet))
        history = []
        fused, payloads, w1 = hand_round(1, w0, deltas, divergent)
        est.update(fused, payloads)
        history.append(est.parameter_influence())
        round2 = {c: deltas[c] for c in ("c1", "c2")}
        fused, payloads, w2 = hand_round(2, w1, round2, divergent)
        report = est.update(fused, payloads)
        history.append((est.parameter_influence(), report, fused))
        fused, payloads, _ = hand_round(3, w2, round2, calm)
        est.update(fused, payloads)
        history.append((est.parameter_influence(), fused))
        return est, history

    plain, basic = run(lwet=False)
    lwet, truncated = run(lwet=True)
    eps1 = truncated[0]
    assert eps1["c0"]["0.weight"][0, 0] != 0 and eps1["c2"]["0.weight"][0, 0] == 0
    # Without LWET the e1 component of c0's estimator doubles in magnitude.
    e1_before = eps1["c0"]["0.weight"][0, 0]
    assert basic[1][0]["c0"]["0.weight"][0, 0] == pytest.approx(-2 * e1_before)
    eps2, report, fused2 = truncated[1]
    assert report.truncated["c0"] == ("0.weight",)
    assert "0.weight" in report.truncated.get("c1", ())  # c1 grows as well
    assert "c2" not in report.truncated
    assert lwet.truncated_blocks()["c0"] == {"0.weight": 2}
    assert torch.equal(eps2["c0"]["0.weight"], torch.zeros(1, 2, dtype=torch.float64))
    # Truncated (Eq. 13): only the combinatorial term is left.
    assert torch.allclose(
        eps2["c1"]["0.weight"], combinatorial(fused2, "c1", "0.weight")
    )
    # Kept: M^{-c2} = I - eta g g^T through c1 alone (eta = 1, g = 0.5 on the bias).
    kept = 0.75 * eps1["c2"]["0.bias"] + combinatorial(fused2, "c2", "0.bias")
    assert torch.allclose(eps2["c2"]["0.bias"], kept)
    # The calm round keeps the recursion for the untruncated blocks only.
    eps3, fused3 = truncated[2]
    assert torch.equal(eps3["c0"]["0.weight"], torch.zeros(1, 2, dtype=torch.float64))
    assert torch.allclose(
        eps3["c1"]["0.weight"], combinatorial(fused3, "c1", "0.weight")
    )
    bias_factor = (1 - 0.25) ** 1  # (I - eta g g^T) on the bias, eta = 1, g = 0.5
    assert eps3["c0"]["0.bias"] == pytest.approx(
        bias_factor * eps2["c0"]["0.bias"], rel=1e-12
    )
    assert torch.allclose(eps2["c2"]["0.weight"], basic[1][0]["c2"]["0.weight"])
    assert plain.truncated_blocks() == {"c0": {}, "c1": {}, "c2": {}}


def test_basic_estimator_overflow_raises_instead_of_returning_inf():
    model = nn.Sequential(nn.Linear(2, 1))
    w0 = {"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1)}
    deltas = {
        "a": {"0.weight": torch.tensor([[1.0, 0.0]]), "0.bias": torch.tensor([0.0])},
        "b": {"0.weight": torch.tensor([[-1.0, 0.0]]), "0.bias": torch.tensor([0.0])},
    }
    # eta g g^T = 1e60 along e1: |eps_e1| grows 1e60-fold a round, inf in round 7.
    huge = {"0.weight": torch.tensor([1e30, 0.0]), "0.bias": torch.tensor([0.0])}
    est = FedInfluence(model, FedInfluenceSettings(("0",), lwet=False))
    w = w0
    for t in range(1, 7):
        fused, payloads, w = hand_round(t, w, deltas, huge)
        est.update(fused, payloads)
    assert est.parameter_influence()["a"]["0.weight"].abs().max() > 1e299
    fused, payloads, w = hand_round(7, w, deltas, huge)
    kept = est.parameter_influence()
    with pytest.raises(FedInfluenceDivergedError, match="'0.weight'.*round 7.*LWET"):
        est.update(fused, payloads)
    assert est.server_round == 6  # a failed update changes nothing
    for c, state in est.parameter_influence().items():
        assert all(torch.equal(v, kept[c][k]) for k, v in state.items())
    lwet = FedInfluence(model, FedInfluenceSettings(("0",), lwet=True))
    w = w0
    for t in range(1, 6):
        fused, payloads, w = hand_round(t, w, deltas, huge)
        lwet.update(fused, payloads)
    assert lwet.truncated_blocks()["a"] == {"0.weight": 2}


# ------------------------------------------------------------ validation
def test_update_rejects_rounds_it_cannot_model():
    model = nn.Sequential(nn.Linear(2, 1))
    w0 = {"0.weight": torch.zeros(1, 2), "0.bias": torch.zeros(1)}
    deltas = {
        "a": {"0.weight": torch.ones(1, 2), "0.bias": torch.ones(1)},
        "b": {"0.weight": -torch.ones(1, 2), "0.bias": torch.zeros(1)},
    }
    rows = {"0.weight": torch.tensor([0.1, 0.2]), "0.bias": torch.tensor([0.3])}
    est = FedInfluence(model, FedInfluenceSettings(("0",)))
    fused, payloads, w1 = hand_round(1, w0, deltas, rows)
    with pytest.raises(PayloadError, match="participant 'b'"):
        est.update(fused, {"a": payloads["a"]})
    short = GradientPayload(
        {"0.weight": torch.zeros(1, 2)}, torch.tensor([0, 1]), LocalSGD(1.0)
    )
    with pytest.raises(PayloadError, match="client 'a'"):
        est.update(fused, {**payloads, "a": short})
    masked = FusedRound(
        **{
            **fused.__dict__,
            "shares": tuple(
                {k: torch.full(v.shape, 0.5) for k, v in w0.items()} for _ in range(2)
            ),
        }
    )
    with pytest.raises(ValueError, match="one scalar aggregation weight"):
        est.update(masked, payloads)
    server_opt = FusedRound(
        **{
            **fused.__dict__,
            "shares": tuple({k: torch.tensor(0.4) for k in w0} for _ in range(2)),
        }
    )
    with pytest.raises(ValueError, match="summing to 1"):
        est.update(server_opt, payloads)
    est.update(fused, payloads)
    with pytest.raises(ValueError, match="in order"):
        est.update(fused, payloads)
    skipped, payloads2, _ = hand_round(3, w0, deltas, rows)  # not from round 1's model
    with pytest.raises(ValueError, match="must see every round"):
        est.update(skipped, payloads2)
