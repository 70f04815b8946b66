"""Per-round methods (paper, update, loo) against slow literal references."""

from __future__ import annotations

import pytest
import torch

from tests.attribution_reference import (
    TinyCNN,
    fedavg_rounds,
    masked_round,
    objective_of,
    perturbed_fedavg_round,
    reference_scores,
    tiny_bert,
    tiny_gpt2,
    token_inputs,
)
from tests.provenance_oracle import oracle_scores
from tracefl.attribution import (
    NOISE_ID,
    SERVER_ID,
    AttributionError,
    FusedRound,
    LeaveOneOut,
    PaperMethod,
    UpdateMethod,
    leave_one_out_state,
)
from tracefl.attribution.terms import client_fused_update, client_update
from tracefl.provenance import NeuronProvenance

LABELS = {"a": [0, 1], "b": [1, 2, 3], "c": [3], "d": [0, 2]}


@pytest.fixture(scope="module")
def cnn_rounds() -> list[tuple[FusedRound, torch.nn.Module]]:
    """Two real FedAvg rounds (float64 CNN with BatchNorm), DP noise in round 2."""
    torch.manual_seed(0)
    plain = fedavg_rounds(TinyCNN().double(), LABELS, [["a", "b", "c", "d"]])
    noisy = fedavg_rounds(
        TinyCNN().double(), LABELS, [["a", "b", "c"]], noise_std=0.01, seed=1
    )
    return plain + noisy


def cnn_inputs(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(9)).double()


def transformer(kind: str) -> torch.nn.Module:
    return tiny_bert() if kind == "bert" else tiny_gpt2()


# ------------------------------------------------------------------- paper


@pytest.mark.parametrize("scale", [True, False])
def test_paper_on_fedavg_equals_the_engine_exactly(cnn_rounds, scale: bool) -> None:
    rnd, model = cnn_rounds[0]
    x = cnn_inputs()
    today = NeuronProvenance(
        model,
        list(rnd.clients),
        list(rnd.num_examples),
        list(rnd.client_ids),
        scale_by_data_share=scale,
        layers="paper",  # the engine as it was before the layer families grew
    ).attribute(x)
    out = PaperMethod(scale_by_data_share=scale).attribute(rnd, model, x)
    k = rnd.num_clients
    assert torch.equal(out.client_scores, today.scores)
    assert torch.equal(out.probs, today.probs)
    assert torch.equal(out.traced, today.traced)
    assert out.client_ids == rnd.client_ids and out.column_ids[k:] == (SERVER_ID,)
    assert out.engine_calls == 2 and out.seconds > 0


def test_paper_server_column_is_the_residual(cnn_rounds) -> None:
    rnd, model = cnn_rounds[1]  # DP noise: residual = noise (+ rounding)
    x = cnn_inputs()
    out = PaperMethod().attribute(rnd, model, x)
    assert out.column_ids[-2:] == (SERVER_ID, NOISE_ID)
    noise = {k: v.double() for k, v in rnd.noise.items()}
    server = {k: rnd.residual[k] - noise[k] for k in noise}
    ref, _ = oracle_scores(model, [server, noise], [1.0, 1.0], x)
    torch.testing.assert_close(out.scores[:, -2:], ref, rtol=1e-9, atol=1e-9)
    # Left out of the argmax, but visible.
    manual = out.scores[:, -2:].max(1).values > out.client_scores.max(1).values
    assert torch.equal(out.pseudo_would_win, manual)


@pytest.mark.parametrize("kind", ["cnn", "bert"])
def test_paper_with_per_coordinate_shares_uses_a_k_theta_k(kind: str) -> None:
    if kind == "cnn":
        torch.manual_seed(1)
        base, x = TinyCNN().double().eval(), cnn_inputs()
    else:
        base, x = transformer("bert"), token_inputs()
    rnd, model = masked_round(base, 3, noise_std=0.001)
    out = PaperMethod().attribute(rnd, model, x)
    sets = [
        {k: rnd.shares[i][k] * rnd.clients[i][k].double() for k in rnd.previous}
        for i in range(3)
    ]
    server = {k: rnd.residual[k] - rnd.noise[k] for k in rnd.previous}
    ref, _ = oracle_scores(model, [*sets, server, rnd.noise], [1.0] * 5, x)
    torch.testing.assert_close(out.scores, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.probs, torch.softmax(ref[:, :3], 1))
    assert out.column_ids == ("c0", "c1", "c2", SERVER_ID, NOISE_ID)


def test_paper_without_share_scaling_scores_whole_client_models() -> None:
    torch.manual_seed(1)
    rnd, model = masked_round(TinyCNN().double().eval(), 3, seed=3)
    x = cnn_inputs(3)
    out = PaperMethod(scale_by_data_share=False).attribute(rnd, model, x, target=1)
    ref, _ = oracle_scores(model, [*rnd.clients, rnd.residual], [1.0] * 4, x, target=1)
    torch.testing.assert_close(out.scores, ref, rtol=1e-9, atol=1e-9)
    assert out.targets.tolist() == [1, 1, 1]


def test_paper_general_path_agrees_with_fedavg_path(cnn_rounds) -> None:
    """On FedAvg, A_k * theta_k is p_k * theta_k: same numbers, other route."""
    rnd, model = cnn_rounds[0]
    shares = tuple({k: v * (1 + 1e-9) for k, v in s.items()} for s in rnd.shares)
    fields = {f: getattr(rnd, f) for f in rnd.__dataclass_fields__}
    general = FusedRound(**{**fields, "shares": shares})
    x = cnn_inputs()
    a = PaperMethod().attribute(rnd, model, x)
    b = PaperMethod().attribute(general, model, x)
    torch.testing.assert_close(a.client_scores, b.client_scores, rtol=1e-7, atol=0)


# ------------------------------------------------------------------ update


@pytest.mark.parametrize("objective", ["log_softmax", "margin"])
@pytest.mark.parametrize("layers", ["paper", "all"])
def test_update_on_a_trained_cnn_round(cnn_rounds, objective: str, layers: str) -> None:
    rnd, model = cnn_rounds[1]
    x = cnn_inputs()
    out = UpdateMethod(objective=objective, layers=layers).attribute(rnd, model, x)
    targets = out.targets.tolist()
    noise = {k: v.double() for k, v in rnd.noise.items()}
    server = {k: rnd.residual_update()[k] - noise[k] for k in noise}
    sets = [*rnd.fused_updates(), server, noise]
    ref = reference_scores(model, sets, x, targets, objective, layers)
    torch.testing.assert_close(out.scores, ref, rtol=1e-8, atol=1e-10)
    with torch.no_grad():
        assert out.targets.tolist() == model.eval()(x).argmax(1).tolist()
    assert out.probs is None and out.engine_calls == 1


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_update_on_a_transformer_with_per_coordinate_shares(kind: str) -> None:
    rnd, model = masked_round(transformer(kind), 3, seed=2)
    x = token_inputs()
    target = torch.tensor([0, 2, 1])
    out = UpdateMethod().attribute(rnd, model, x, target=target)
    ref = reference_scores(
        model,
        [*rnd.fused_updates(), rnd.residual_update()],
        x,
        [0, 2, 1],
        "log_softmax",
        "all",
    )
    torch.testing.assert_close(out.scores, ref, rtol=1e-8, atol=1e-10)
    assert out.targets.tolist() == [0, 2, 1]


def test_update_columns_add_up_to_the_rounds_first_order_change(cnn_rounds) -> None:
    rnd, model = cnn_rounds[0]
    x = cnn_inputs()
    out = UpdateMethod(layers="all").attribute(rnd, model, x)
    step = {
        k: rnd.aggregate[k].double() - rnd.previous[k].double() for k in rnd.previous
    }
    whole = reference_scores(
        model, [step], x, out.targets.tolist(), "log_softmax", "all"
    )
    torch.testing.assert_close(out.scores.sum(1), whole[:, 0], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------- loo


def literal_fedavg_without(rnd: FusedRound, k: int) -> dict[str, torch.Tensor]:
    n = [rnd.num_examples[j] for j in range(rnd.num_clients) if j != k]
    states = [rnd.clients[j] for j in range(rnd.num_clients) if j != k]
    return {
        key: sum(nj * s[key].double() for nj, s in zip(n, states, strict=True)) / sum(n)
        + rnd.residual[key].double()
        for key in rnd.previous
    }


def literal_masked_without(rnd: FusedRound, k: int) -> dict[str, torch.Tensor]:
    """Written differently: (S / rest) * sum_{j != k} A_j theta_j, else by n_j."""
    others = [j for j in range(rnd.num_clients) if j != k]
    n_rest = sum(rnd.num_examples[j] for j in others)
    out = {}
    for key in rnd.previous:
        a = [rnd.shares[j][key].double() for j in range(rnd.num_clients)]
        rest = sum(a[j] for j in others)
        kept = sum(a[j] * rnd.clients[j][key].double() for j in others)
        by_n = sum(
            rnd.num_examples[j] / n_rest * rnd.clients[j][key].double() for j in others
        )
        scaled = torch.where(
            rest > 0, kept * (rest + a[k]) / rest.clamp_min(1e-300), a[k] * by_n
        )
        out[key] = scaled + rnd.residual[key].double()
    return out


@pytest.mark.parametrize(
    ("objective", "round_index"),
    [("log_softmax", 0), ("logit", 0), ("margin", 0), ("log_softmax", 1)],
)
def test_loo_on_fedavg_is_the_literal_reweighted_average(
    cnn_rounds, objective: str, round_index: int
) -> None:
    """Round 2 has DP noise: the residual stays in every counterfactual."""
    rnd, model = cnn_rounds[round_index]
    x = cnn_inputs()
    out = LeaveOneOut(objective=objective, chunk_size=2).attribute(rnd, model, x)
    targets = out.targets.tolist()
    full = objective_of(model, None, x, targets, objective)
    for k in range(rnd.num_clients):
        state = literal_fedavg_without(rnd, k)
        torch.testing.assert_close(
            leave_one_out_state(rnd, k), state, rtol=1e-12, atol=1e-12
        )
        ref = full - objective_of(model, state, x, targets, objective)
        torch.testing.assert_close(out.scores[:, k], ref, rtol=1e-8, atol=1e-10)
    assert out.forward_passes == rnd.num_clients + 1 and out.engine_calls == 0
    assert out.column_ids == rnd.client_ids


@pytest.mark.parametrize("kind", ["cnn", "bert"])
def test_loo_with_per_coordinate_shares(kind: str) -> None:
    if kind == "cnn":
        torch.manual_seed(2)
        base, x = TinyCNN().double().eval(), cnn_inputs(3)
    else:
        base, x = transformer("bert"), token_inputs()
    rnd, model = masked_round(base, 3, seed=4)
    out = LeaveOneOut().attribute(rnd, model, x)
    targets = out.targets.tolist()
    full = objective_of(model, None, x, targets, "log_softmax")
    for k in range(3):
        state = literal_masked_without(rnd, k)
        torch.testing.assert_close(
            leave_one_out_state(rnd, k), state, rtol=1e-10, atol=1e-12
        )
        ref = full - objective_of(model, state, x, targets, "log_softmax")
        torch.testing.assert_close(out.scores[:, k], ref, rtol=1e-8, atol=1e-10)


def test_loo_with_a_single_client_removes_the_round() -> None:
    torch.manual_seed(3)
    rnd, model = perturbed_fedavg_round(TinyCNN().double().eval(), [5])
    x = cnn_inputs(3)
    out = LeaveOneOut().attribute(rnd, model, x)
    targets = out.targets.tolist()
    ref = objective_of(model, None, x, targets, "log_softmax") - objective_of(
        model, rnd.previous, x, targets, "log_softmax"
    )
    torch.testing.assert_close(out.scores[:, 0], ref, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------- bad input


def test_model_from_another_round_is_rejected(cnn_rounds) -> None:
    rnd, _ = cnn_rounds[0]
    _, other = cnn_rounds[1]
    for method in (PaperMethod(), UpdateMethod(), LeaveOneOut()):
        with pytest.raises(AttributionError, match="round 1's aggregate"):
            method.attribute(rnd, other, cnn_inputs())


def test_reserved_client_id_and_bad_options_are_rejected(cnn_rounds) -> None:
    rnd, model = cnn_rounds[0]
    fields = {f: getattr(rnd, f) for f in rnd.__dataclass_fields__}
    named = FusedRound(**{**fields, "client_ids": ("a", "server", "c", "d")})
    with pytest.raises(AttributionError, match="'server' is reserved"):
        UpdateMethod().attribute(named, model, cnn_inputs())
    with pytest.raises(AttributionError, match="objective='ce'"):
        UpdateMethod(objective="ce")
    with pytest.raises(AttributionError, match="layers='some'"):
        UpdateMethod(layers="some")
    with pytest.raises(AttributionError, match="objective='ce'"):
        LeaveOneOut(objective="ce")
    with pytest.raises(AttributionError, match="FusedRound"):
        LeaveOneOut().attribute({"round": 1}, model, cnn_inputs())


def test_result_columns_by_name(cnn_rounds) -> None:
    rnd, model = cnn_rounds[1]
    out = UpdateMethod().attribute(rnd, model, cnn_inputs())
    assert torch.equal(out.column(NOISE_ID), out.scores[:, -1])
    assert out.traced_client_ids == [rnd.client_ids[i] for i in out.traced.tolist()]
    with pytest.raises(KeyError, match="no column 'zzz'"):
        out.column("zzz")


def test_per_client_views_equal_the_rounds_own(cnn_rounds) -> None:
    torch.manual_seed(4)
    masked, _ = masked_round(TinyCNN().double().eval(), 3)
    for rnd in (cnn_rounds[1][0], masked):
        for k in range(rnd.num_clients):
            for mine, theirs in (
                (client_update(rnd, k), rnd.updates()[k]),
                (client_fused_update(rnd, k), rnd.fused_updates()[k]),
            ):
                assert mine.keys() == theirs.keys()
                assert all(torch.equal(mine[key], theirs[key]) for key in mine)
