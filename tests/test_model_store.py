"""The saved-model layout: round trip, manifest, budget, and every bad file."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tracefl.attribution import FusedRound
from tracefl.config import ConfigError, parse_run_config
from tracefl.model_store import (
    KeepModelsPolicy,
    ModelStore,
    ModelStoreError,
    check_state,
    load_state_file,
    load_state_into,
    state_nbytes,
)


class Net(nn.Module):
    """Conv + BatchNorm + Linear: floating buffers and an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).flatten(1)[:, :8])


def random_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


def make_round(
    server_round: int = 2, k: int = 3, noise: bool = False, seed: int = 0
) -> FusedRound:
    previous = random_state(seed)
    clients = [random_state(seed + 1 + i) for i in range(k)]
    n = [10 * (i + 1) for i in range(k)]
    total = sum(n)
    aggregate = {
        key: sum(
            c[key].double() * (ni / total) for c, ni in zip(clients, n, strict=True)
        ).to(previous[key].dtype)
        for key in previous
        if previous[key].is_floating_point()
    }
    noise_state = None
    if noise:
        torch.manual_seed(seed + 99)
        noise_state = {key: 0.01 * torch.randn_like(v) for key, v in aggregate.items()}
        aggregate = {key: v + noise_state[key] for key, v in aggregate.items()}
    return FusedRound.weighted_average(
        server_round,
        "fedavg",
        [f"client-{i}" for i in range(k)],
        n,
        previous,
        clients,
        aggregate,
        noise=noise_state,
    )


def keep_all(max_files: int = 1000, max_mb: float = 100.0) -> KeepModelsPolicy:
    return KeepModelsPolicy(
        rounds=None, final=True, max_files=max_files, max_bytes=int(max_mb * 2**20)
    )


def assert_states_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------- round trip


@pytest.mark.parametrize("noise", [False, True])
def test_round_trip_returns_the_fused_round_exactly(
    tmp_path: Path, noise: bool
) -> None:
    fused = make_round(noise=noise)
    store = ModelStore(tmp_path / "models", keep_all())
    assert store.save_round(fused)

    loaded = ModelStore.open(tmp_path).load_round(2)  # run dir or store dir
    assert loaded.server_round == 2 and loaded.aggregator == "fedavg"
    assert loaded.client_ids == fused.client_ids
    assert loaded.num_examples == fused.num_examples
    assert_states_equal(loaded.previous, fused.previous)
    assert_states_equal(loaded.aggregate, fused.aggregate)
    for a, b in zip(loaded.clients, fused.clients, strict=True):
        assert_states_equal(a, b)
    for a, b in zip(loaded.shares, fused.shares, strict=True):
        assert_states_equal(a, b)
    # The residual is recomputed from (1): the same float64 numbers.
    assert_states_equal(loaded.residual, fused.residual)
    if noise:
        assert_states_equal(loaded.noise, fused.noise)
    else:
        assert loaded.noise is None
    recon = loaded.reconstruct()
    for key, value in fused.aggregate.items():
        assert torch.allclose(recon[key], value.double(), atol=1e-6)


def test_layout_and_manifest(tmp_path: Path) -> None:
    fused = make_round(server_round=3, k=2)
    store = ModelStore(tmp_path, keep_all(), architecture={"model": "cnn"})
    store.save_round(fused)
    final_state = random_state(7)
    store.save_final(final_state, server_round=3)

    names = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()
    )
    assert names == [
        "final/global.safetensors",
        "manifest.json",
        "round-003/client-0.safetensors",
        "round-003/client-1.safetensors",
        "round-003/fusion.safetensors",
        "round-003/global.safetensors",
        "round-003/previous.safetensors",
    ]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == "tracefl-model-store"
    assert manifest["architecture"] == {"model": "cnn"}
    entry = manifest["rounds"]["3"]
    assert entry["client_ids"] == ["client-0", "client-1"]
    assert entry["num_examples"] == [10, 20]
    for f in entry["files"].values():
        assert (tmp_path / f["path"]).stat().st_size == f["bytes"]
    # One client per file, readable on its own with its metadata.
    client = load_state_file(tmp_path / "round-003/client-1.safetensors")
    assert_states_equal(client, fused.clients[1])
    # The final model keeps the whole state dict, integer buffers included.
    final = ModelStore.open(tmp_path).load_final()
    assert_states_equal(final, final_state)
    assert final["bn.num_batches_tracked"].dtype == torch.int64
    net = Net()
    net.load_state_dict(final)  # strict: a complete state dict


def test_policy_decides_which_rounds(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, KeepModelsPolicy(rounds=frozenset({2}), final=False))
    assert not store.save_round(make_round(server_round=1))
    assert store.save_round(make_round(server_round=2))
    assert not store.save_final(random_state(0))
    assert store.rounds() == [2]
    with pytest.raises(
        ModelStoreError, match=r"round 1 is not saved.*saved rounds: \[2\]"
    ):
        store.load_round(1)
    with pytest.raises(ModelStoreError, match="keep-final-model"):
        store.load_final()
    nothing = ModelStore(tmp_path / "none")
    assert not nothing.save_round(make_round()) and not (tmp_path / "none").exists()


def test_policy_from_config_keys() -> None:
    cfg = parse_run_config(
        {
            "keep-models-rounds": "1,3",
            "keep-final-model": True,
            "keep-models-max-files": 50,
            "keep-models-max-mb": 1.5,
        }
    )
    policy = KeepModelsPolicy.from_config(cfg)
    assert policy == KeepModelsPolicy(
        rounds=frozenset({1, 3}), final=True, max_files=50, max_bytes=int(1.5 * 2**20)
    )
    assert (
        KeepModelsPolicy.from_config(
            parse_run_config({"keep-models-rounds": "all"})
        ).rounds
        is None
    )
    off = KeepModelsPolicy.from_config(parse_run_config({}))
    assert not off.keeps_anything


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"keep-models-rounds": "x"}, "keep-models-rounds", "'all'"),
        ({"keep-models-rounds": "0"}, "keep-models-rounds", ">= 1"),
        (
            {"keep-models-rounds": "4", "num-server-rounds": 3},
            "keep-models-rounds",
            "<=",
        ),
        ({"keep-models-max-files": 0}, "keep-models-max-files", ">= 1"),
        ({"keep-models-max-mb": -1.0}, "keep-models-max-mb", "> 0"),
        ({"keep-final-model": "yes"}, "keep-final-model", "true or false"),
    ],
)
def test_keep_model_keys_are_validated(overrides: dict, key: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        parse_run_config(overrides)
    assert hint in str(info.value)


# ---------------------------------------------------------------- budget


def test_budget_is_checked_before_training_from_model_size(tmp_path: Path) -> None:
    state = random_state(0)
    per_model = state_nbytes(state)
    # 2 rounds x (5 clients + previous + global) models + final + shares.
    store = ModelStore(tmp_path, keep_all(max_files=1000, max_mb=1000))
    files, nbytes = store.worst_case(state, clients_per_round=5, num_rounds=2)
    assert files == 1 + 2 * (5 + 3) + 1
    assert nbytes >= 2 * 7 * per_model + per_model
    store.check_budget(state, clients_per_round=5, num_rounds=2)

    few_files = ModelStore(tmp_path, keep_all(max_files=files - 1))
    with pytest.raises(ConfigError, match="'keep-models-max-files' = 17") as info:
        few_files.check_budget(state, clients_per_round=5, num_rounds=2)
    assert "18 files" in str(info.value)
    tiny = ModelStore(tmp_path, keep_all(max_mb=nbytes / 2**20 * 0.5))
    with pytest.raises(ConfigError, match="keep-models-max-mb"):
        tiny.check_budget(state, clients_per_round=5, num_rounds=2)
    with pytest.raises(ConfigError, match="keep-models-max-mb"):  # DP noise counts
        ModelStore(tmp_path, keep_all(max_mb=nbytes / 2**20 * 1.01)).check_budget(
            state, clients_per_round=5, num_rounds=2, with_noise=True
        )


def test_for_run_checks_budget_and_clears_an_older_run(tmp_path: Path) -> None:
    cfg = parse_run_config(
        {"keep-models-rounds": "all", "keep-final-model": True, "num-server-rounds": 2}
    )
    old = ModelStore.for_run(cfg, tmp_path, random_state(0), 3)
    old.save_round(make_round(server_round=1))
    old.save_round(make_round(server_round=2))
    (tmp_path / "models" / "notes.txt").write_text("mine")
    new = ModelStore.for_run(cfg, tmp_path, random_state(0), 3)
    assert new.rounds() == []
    assert not (tmp_path / "models" / "round-001").exists()
    assert (tmp_path / "models" / "notes.txt").read_text() == "mine"  # not listed
    assert new.architecture["model"] == "cnn"
    tight = parse_run_config({"keep-models-rounds": "all", "keep-models-max-files": 5})
    with pytest.raises(ConfigError, match="keep-models-max-files"):
        ModelStore.for_run(tight, tmp_path, random_state(0), 10)


def test_a_round_over_budget_is_skipped_and_recorded(tmp_path: Path) -> None:
    fused = make_round(k=3)
    one_round = 1 + 6  # manifest + 3 clients + previous + global + fusion
    store = ModelStore(tmp_path, keep_all(max_files=one_round))
    assert store.save_round(make_round(server_round=1, k=3))
    assert not store.save_round(fused)
    manifest = store.manifest
    assert "budget" in manifest["skipped_rounds"]["2"]
    with pytest.raises(ModelStoreError, match=r"round 2 is not saved.*skipped: budget"):
        ModelStore.open(tmp_path).load_round(2)


# -------------------------------------------------------------- bad files


def saved_store(tmp_path: Path) -> Path:
    ModelStore(tmp_path, keep_all()).save_round(make_round(server_round=1, k=2))
    return tmp_path / "round-001" / "client-1.safetensors"


def test_truncated_saved_file_is_named(tmp_path: Path) -> None:
    path = saved_store(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelStoreError, match=r"client-1.safetensors has \d+ bytes.*truncated"
    ):
        ModelStore.open(tmp_path).load_round(1)
    with pytest.raises(ModelStoreError, match="truncated or corrupt"):
        load_state_file(path)


def test_replaced_saved_file_fails_its_checksum(tmp_path: Path) -> None:
    path = saved_store(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelStoreError, match="SHA-256"):
        ModelStore.open(tmp_path).load_round(1)


def test_missing_saved_file_and_missing_store(tmp_path: Path) -> None:
    path = saved_store(tmp_path)
    path.unlink()
    with pytest.raises(ModelStoreError, match="client-1.safetensors is missing"):
        ModelStore.open(tmp_path).load_round(1)
    with pytest.raises(ModelStoreError, match="keep-models-rounds"):
        ModelStore.open(tmp_path / "elsewhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ModelStoreError, match="not a TraceFL model-store"):
        ModelStore.open(tmp_path / "bad")


class Boom:
    """Unpickling this object runs code (it would create a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_torch_files_are_read_without_unsafe_unpickling(tmp_path: Path) -> None:
    state = random_state(0)
    torch.save(state, tmp_path / "plain.pt")
    assert_states_equal(load_state_file(tmp_path / "plain.pt"), state)
    torch.save({"epoch": 3, "model_state_dict": state}, tmp_path / "ckpt.pth")
    assert_states_equal(load_state_file(tmp_path / "ckpt.pth"), state)

    torch.save(Net(), tmp_path / "module.pt")  # a whole pickled module
    with pytest.raises(ModelStoreError, match="unsafe unpickling.*state_dict"):
        load_state_file(tmp_path / "module.pt")

    marker = tmp_path / "pwned"
    with (tmp_path / "evil.pt").open("wb") as handle:
        pickle.dump({"weight": Boom(marker)}, handle)
    with pytest.raises(ModelStoreError, match="unsafe unpickling|not a readable"):
        load_state_file(tmp_path / "evil.pt")
    assert not marker.exists()  # nothing ran

    torch.save({"weight": torch.zeros(2), "note": "hi"}, tmp_path / "mixed.pt")
    with pytest.raises(ModelStoreError, match="entry 'note' is not a tensor"):
        load_state_file(tmp_path / "mixed.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "plain.pt").read_bytes()[:100])
    with pytest.raises(ModelStoreError, match="cut.pt is not a readable PyTorch file"):
        load_state_file(tmp_path / "cut.pt")


def test_other_bad_state_files(tmp_path: Path) -> None:
    with pytest.raises(ModelStoreError, match="does not exist"):
        load_state_file(tmp_path / "nope.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ModelStoreError, match="is empty"):
        load_state_file(tmp_path / "empty.safetensors")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelStoreError, match="unknown format '.onnx'"):
        load_state_file(tmp_path / "model.onnx")
    save_file({}, tmp_path / "none.safetensors")
    with pytest.raises(ModelStoreError, match="holds no tensors"):
        load_state_file(tmp_path / "none.safetensors")


def test_load_state_into_names_the_mismatch() -> None:
    net = Net()
    good = random_state(3)
    floating = {k: v for k, v in good.items() if v.is_floating_point()}
    load_state_into(net, floating, "client 'a'")  # integer buffer may be absent
    assert torch.equal(net.fc.weight, good["fc.weight"])
    with pytest.raises(ModelStoreError, match="client 'a'.*missing key 'fc.bias'"):
        load_state_into(
            Net(), {k: v for k, v in floating.items() if k != "fc.bias"}, "client 'a'"
        )
    with pytest.raises(ModelStoreError, match="unexpected key 'head.weight'"):
        load_state_into(
            Net(), {**floating, "head.weight": torch.zeros(1)}, "client 'a'"
        )
    bad = {**floating, "fc.weight": torch.zeros(3, 9)}
    with pytest.raises(
        ModelStoreError, match=r"'fc.weight' has shape \(3, 9\).*\(3, 8\)"
    ):
        load_state_into(Net(), bad, "client 'a'")
    # The same checks without loading (client files of tracefl explain).
    untouched = Net()
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    check_state(untouched.state_dict(), floating, "client 'a'")
    with pytest.raises(ModelStoreError, match=r"client 'b'.*\(3, 9\)"):
        check_state(untouched.state_dict(), bad, "client 'b'")
    assert all(torch.equal(v, untouched.state_dict()[k]) for k, v in before.items())
