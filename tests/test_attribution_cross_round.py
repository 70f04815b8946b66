"""Cross-round methods: the online accumulation and the cumulative store."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.attribution_reference import (
    TinyCNN,
    fedavg_rounds,
    masked_round,
    reference_scores,
    snapshot,
    tiny_bert,
    token_inputs,
    total,
)
from tracefl.attribution import (
    NOISE_ID,
    SERVER_ID,
    AttributionError,
    CrossRoundOnline,
    CumulativeMethod,
    CumulativeUpdates,
    FusedRound,
)

LABELS = {"a": [0, 1], "b": [1, 2, 3], "c": [3], "d": [0, 2], "e": [2]}
# Partial participation: "e" joins late, "a" skips round 2, "d" skips round 3.
SCHEDULE = [["a", "b", "c", "d"], ["b", "c", "d", "e"], ["a", "b", "c", "e"]]


ALL = ("log_softmax", "all")  # objective and layer set of the defaults


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def snapshot_round(rnd: FusedRound) -> list[float]:
    """Fingerprint of every tensor of a round (to detect in-place changes)."""
    states = [rnd.previous, rnd.aggregate, rnd.residual, *rnd.clients]
    if rnd.noise is not None:
        states.append(rnd.noise)
    return [float(v.double().sum()) for s in states for v in s.values()]


@functools.cache
def training(dtype: torch.dtype, noise_std: float) -> list[tuple[FusedRound, object]]:
    torch.manual_seed(0)
    return fedavg_rounds(
        TinyCNN().to(dtype), LABELS, SCHEDULE, noise_std=noise_std, seed=5
    )


@pytest.fixture(scope="module")
def noisy_rounds():
    return training(torch.float64, 0.005)


def queries(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(n, 1, 8, 8, generator=gen).double()
    return x, torch.arange(n) % 4


# ------------------------------------------------------------------ online


def test_online_equals_a_recomputation_over_stored_rounds(noisy_rounds) -> None:
    x, y = queries()
    online = CrossRoundOnline(x, y, layers="paper")
    for rnd, model in noisy_rounds:
        online.observe(rnd, model)
    weighted = online.result(fusion_weighted=True)
    raw = online.result(fusion_weighted=False)

    ids = ["a", "b", "c", "d", "e"]
    expected_w = {c: torch.zeros(len(y), dtype=torch.float64) for c in ids}
    expected_r = {c: torch.zeros(len(y), dtype=torch.float64) for c in ids}
    pseudo = {SERVER_ID: 0.0, NOISE_ID: 0.0}
    for rnd, model in noisy_rounds:  # from scratch, one round at a time
        deltas = rnd.updates()
        p = rnd.data_share
        noise = {k: v.double() for k, v in rnd.noise.items()}
        server = {k: rnd.residual_update()[k] - noise[k] for k in noise}
        ref = reference_scores(
            model, [*deltas, server, noise], x, y.tolist(), "log_softmax", "paper"
        )
        for i, cid in enumerate(rnd.client_ids):
            expected_r[cid] += ref[:, i]
            expected_w[cid] += p[i] * ref[:, i]
        pseudo[SERVER_ID] += ref[:, -2]
        pseudo[NOISE_ID] += ref[:, -1]

    assert weighted.column_ids == (*ids, SERVER_ID, NOISE_ID)
    for cid in ids:
        torch.testing.assert_close(
            weighted.column(cid), expected_w[cid], rtol=1e-8, atol=1e-10
        )
        torch.testing.assert_close(
            raw.column(cid), expected_r[cid], rtol=1e-8, atol=1e-10
        )
    for pid, value in pseudo.items():
        close(weighted.column(pid), value)
    assert weighted.engine_calls == len(noisy_rounds) == len(online.rounds)
    assert torch.equal(weighted.targets, y)
    assert weighted.traced.max() < 5  # pseudo-clients are never traced


def test_online_with_per_coordinate_shares_uses_the_fused_updates() -> None:
    x = token_inputs()
    y = torch.tensor([0, 1, 2])
    rnd, model = masked_round(tiny_bert(), 3, seed=6)
    online = CrossRoundOnline(x, y, include_server=False)
    online.observe(rnd, model)
    ref_w = reference_scores(model, rnd.fused_updates(), x, [0, 1, 2], *ALL)
    ref_r = reference_scores(model, rnd.updates(), x, [0, 1, 2], *ALL)
    torch.testing.assert_close(online.result().scores, ref_w, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        online.result(fusion_weighted=False).scores, ref_r, rtol=1e-8, atol=1e-10
    )


def test_online_rejects_bad_use(noisy_rounds) -> None:
    x, y = queries()
    with pytest.raises(AttributionError, match=r"\(4,\) int64"):
        CrossRoundOnline(x, y[:3])
    online = CrossRoundOnline(x, y)
    with pytest.raises(AttributionError, match="at least one observed round"):
        online.result()
    rnd, model = noisy_rounds[1]
    online.observe(rnd, model)
    with pytest.raises(AttributionError, match="round 1 observed after round 2"):
        online.observe(*noisy_rounds[0])
    with pytest.raises(AttributionError, match="round 3's aggregate"):
        online.observe(noisy_rounds[2][0], model)


# --------------------------------------------------------------- cumulative


@pytest.mark.parametrize(
    ("dtype", "noise_std", "store_dtype", "tol"),
    [
        (torch.float32, 0.0, torch.float64, 1e-12),
        (torch.float32, 0.01, torch.float64, 1e-12),
        (torch.float64, 0.01, torch.float64, 1e-13),
        (torch.float32, 0.01, torch.float32, 1e-6),
    ],
)
def test_cumulative_identity_on_a_real_training_loop(
    dtype, noise_std, store_dtype, tol
) -> None:
    rounds = training(dtype, noise_std)
    before = [snapshot_round(rnd) for rnd, _ in rounds]
    store = CumulativeUpdates(dtype=store_dtype)
    for rnd, _ in rounds:
        store.add(rnd)
    # The store keeps private copies: the rounds are left as they were.
    assert [snapshot_round(rnd) for rnd, _ in rounds] == before
    final = snapshot(rounds[-1][1])
    rebuilt = store.reconstruct()
    for key, value in final.items():
        torch.testing.assert_close(rebuilt[key], value.double(), rtol=0, atol=tol)
    assert store.client_ids == ("a", "b", "c", "d", "e")
    assert store.pseudo_ids == ((SERVER_ID, NOISE_ID) if noise_std else (SERVER_ID,))
    # U_k is the literal sum of the fused updates of the rounds k took part in.
    for cid in store.client_ids:
        parts = [
            rnd.fused_updates()[rnd.client_ids.index(cid)]
            for rnd, _ in rounds
            if cid in rnd.client_ids
        ]
        for key, value in total(parts).items():
            torch.testing.assert_close(
                store.get(cid)[key].double(), value, rtol=0, atol=10 * tol
            )
    if noise_std:
        noise = total([{k: v.double() for k, v in r.noise.items()} for r, _ in rounds])
        for key, value in noise.items():
            torch.testing.assert_close(store.get(NOISE_ID)[key], value.to(store_dtype))


def test_cumulative_method_against_a_reference(noisy_rounds) -> None:
    store = CumulativeUpdates()
    for rnd, _ in noisy_rounds:
        store.add(rnd)
    final = noisy_rounds[-1][1]
    x, y = queries()
    out = CumulativeMethod(store, layers="paper").attribute(final, x, target=y)
    sets = [store.get(c) for c in (*store.client_ids, *store.pseudo_ids)]
    ref = reference_scores(final, sets, x, y.tolist(), "log_softmax", "paper")
    torch.testing.assert_close(out.scores, ref, rtol=1e-8, atol=1e-10)
    assert out.column_ids == (*store.client_ids, SERVER_ID, NOISE_ID)
    assert out.num_clients == 5 and out.engine_calls == 1
    # In groups of two parameter sets per engine call: same numbers.
    grouped = CumulativeMethod(store, layers="paper", clients_per_call=2)
    again = grouped.attribute(final, x, target=y)
    torch.testing.assert_close(again.scores, out.scores, rtol=1e-12, atol=1e-14)
    assert again.engine_calls == 4


def test_store_spills_to_disk_beyond_the_ram_budget(noisy_rounds, tmp_path) -> None:
    one = sum(t.numel() * 8 for t in noisy_rounds[0][0].previous.values())
    ram = CumulativeUpdates()
    disk = CumulativeUpdates(ram_budget_bytes=3 * one, directory=tmp_path / "spill")
    for rnd, _ in noisy_rounds:
        ram.add(rnd)
        disk.add(rnd)
    # theta_0, U_a, U_b fit; the rest (4 clients, server, noise, latest) is on disk.
    assert disk.ram_bytes <= 3 * one and disk.num_on_disk == 6
    assert len(list((tmp_path / "spill").glob("*.safetensors"))) == 6
    for cid in (*ram.client_ids, *ram.pseudo_ids):
        for key, value in ram.get(cid).items():
            assert torch.equal(disk.get(cid)[key], value)
    x, y = queries()
    final = noisy_rounds[-1][1]
    a = CumulativeMethod(ram).attribute(final, x, target=y)
    b = CumulativeMethod(disk, clients_per_call=3).attribute(final, x, target=y)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-12, atol=1e-14)
    # theta_0, latest, a-d, server and noise fit; "e" joining in round 2 does not.
    tight = CumulativeUpdates(ram_budget_bytes=8 * one)
    tight.add(noisy_rounds[0][0])
    with pytest.raises(AttributionError, match=r"new entries \['e'\].*directory="):
        tight.add(noisy_rounds[1][0])  # rejected before any change
    assert tight.rounds == (1,) and tight.client_ids == ("a", "b", "c", "d")
    for key, value in tight.get("b").items():
        assert torch.equal(value, noisy_rounds[0][0].fused_updates()[1][key])


@pytest.mark.parametrize("budget_clients", [None, 2])
def test_store_save_load_round_trip(noisy_rounds, tmp_path, budget_clients) -> None:
    one = sum(t.numel() * 8 for t in noisy_rounds[0][0].previous.values())
    budget = None if budget_clients is None else budget_clients * one
    store = CumulativeUpdates(ram_budget_bytes=budget, directory=tmp_path / "live")
    for rnd, _ in noisy_rounds[:2]:
        store.add(rnd)
    store.save(tmp_path / "saved")
    back = CumulativeUpdates.load(tmp_path / "saved", ram_budget_bytes=budget)
    assert back.client_ids == store.client_ids and back.rounds == (1, 2)
    assert back.pseudo_ids == store.pseudo_ids and back.shapes == store.shapes
    for cid in (*store.client_ids, *store.pseudo_ids):
        for key, value in store.get(cid).items():
            assert torch.equal(back.get(cid)[key], value)
    # Both go on to the same state after round 3.
    store.add(noisy_rounds[2][0])
    back.add(noisy_rounds[2][0])
    for key, value in store.reconstruct().items():
        assert torch.equal(back.reconstruct()[key], value)


def test_store_mismatches_are_named(noisy_rounds, tmp_path) -> None:
    store = CumulativeUpdates()
    store.add(noisy_rounds[0][0])
    with pytest.raises(AttributionError, match="round 3 did not start from round 1"):
        store.add(noisy_rounds[2][0])  # round 2 missing
    with pytest.raises(AttributionError, match="round 1 added after round 1"):
        store.add(noisy_rounds[0][0])
    other = TinyCNN(num_classes=3).double()
    with pytest.raises(AttributionError, match=r"'fc2.weight' has shape \(4, 16\)"):
        CumulativeMethod(store).attribute(other, queries()[0])
    bigger = torch.nn.Sequential(TinyCNN().double())
    with pytest.raises(AttributionError, match="keys missing from the model"):
        store.check_model(bigger)
    with pytest.raises(AttributionError, match="store is empty"):
        CumulativeMethod(CumulativeUpdates()).attribute(other, queries()[0])
    with pytest.raises(AttributionError, match="no cumulative store"):
        CumulativeUpdates.load(tmp_path)
    with pytest.raises(AttributionError, match="no client 'zz'"):
        store.get("zz")
    with pytest.raises(AttributionError, match="needs a CumulativeUpdates"):
        CumulativeMethod({"a": 1})
