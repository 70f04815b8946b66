"""Typed run configuration, parsed once from Flower's ``context.run_config``.

Every kebab-case key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` maps to
one field of :class:`TraceFLConfig` (``num-server-rounds`` -> ``num_server_rounds``).
:func:`parse_run_config` converts and validates all of them *before* any training
starts, so a typo or an impossible value fails fast with a message that names the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracefl.registry import DATASET_NAMES, IMAGE_MODEL_NAMES, TEXT_MODEL_NAMES

FUSIONS = ("fedavg", "fedprox")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")
DP_CLIPPING_MODES = ("server", "client")
MEDMNIST_SIZES = (28, 64, 128, 224)


class ConfigError(ValueError):
    """Invalid run-config value; the message names key, value and what is allowed."""


@dataclass(frozen=True)
class TraceFLConfig:
    """All run-config keys of the TraceFL app, typed and validated.

    Field names are the run-config keys with ``-`` replaced by ``_``.
    """

    # Federation
    num_server_rounds: int = 3
    num_clients: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.0
    min_train_nodes: int = 2
    min_evaluate_nodes: int = 0
    min_available_nodes: int = 2
    fusion: str = "fedavg"
    proximal_mu: float = 0.01
    round_timeout: float = 3600.0
    seed: int = 42
    device: str = "auto"
    # Local training
    local_epochs: int = 2
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Data
    dataset: str = "mnist"
    model: str = "cnn"
    dirichlet_alpha: float = 0.3
    min_partition_size: int = 10
    max_per_client_data_size: int = 2048
    max_server_data_size: int = 2048
    server_test_fraction: float = 0.2
    data_dir: str = ""
    download: bool = False
    image_size: int = 28
    max_seq_len: int = 128
    text_include_answer: bool = False
    pretrained: bool = False
    # Provenance
    provenance: bool = True
    provenance_rounds: str = "all"
    provenance_inputs_per_label: int = 2
    provenance_max_inputs: int = 64
    label_min_count: int = 1
    client_weights_normalization: bool = True
    enable_beta: bool = True
    beta_decay: float = 0.9
    provenance_chunk_size: int = 32
    # Faulty clients
    faulty_clients: str = ""
    label_flip: str = ""
    faulty_max_inputs: int = 10
    feddebug: bool = True
    feddebug_num_inputs: int = 10
    feddebug_na_threshold: float = 0.003
    # Differential privacy
    noise_multiplier: float = 0.0
    clipping_norm: float = 0.0
    dp_clipping: str = "server"
    # Outputs
    run_name: str = "default"
    output_dir: str = ""
    plots: bool = True
    # --- Keep models (tracefl.model_store) ----------------------------------
    keep_final_model: bool = False
    keep_models_rounds: str = ""
    keep_models_max_files: int = 1000
    keep_models_max_mb: float = 2048.0
    # --- end keep models ----------------------------------------------------

    # Derived, not run-config keys.
    faulty_client_ids: tuple[int, ...] = field(default=(), compare=False)
    label_flip_map: dict[int, int] = field(default_factory=dict, compare=False)

    @property
    def dp_enabled(self) -> bool:
        """Whether differential privacy wraps the strategy."""
        return self.clipping_norm > 0.0

    @property
    def faulty_mode(self) -> bool:
        """Whether label-flipping clients are configured."""
        return bool(self.faulty_client_ids)

    def resolved_output_dir(self, base: Path | None = None) -> Path:
        """Absolute output directory (``results/<run-name>`` by default).

        A relative path is resolved against ``base`` (default: the current
        directory, which for the ServerApp is the SuperLink's working
        directory - so it is logged; scripts always pass an absolute one).
        """
        path = Path(self.output_dir or Path("results") / self.run_name).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return path.resolve()

    def provenance_round_set(self) -> set[int] | None:
        """Rounds to trace, or ``None`` for every round."""
        if self.provenance_rounds.strip().lower() == "all":
            return None
        return {int(tok) for tok in self.provenance_rounds.split(",") if tok.strip()}

    # --- Keep models --------------------------------------------------------
    def keep_models_round_set(self) -> set[int] | None:
        """Rounds whose client models are kept: ``None`` for every round.

        An empty ``keep-models-rounds`` keeps none (the empty set).
        """
        text = self.keep_models_rounds.strip().lower()
        if text == "all":
            return None
        return {int(tok) for tok in text.split(",") if tok.strip()}

    # --- end keep models ----------------------------------------------------

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case run-config view of this object (for ``run.json``)."""
        return {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.compare
        }


def run_config_keys() -> tuple[str, ...]:
    """All accepted kebab-case run-config keys."""
    return tuple(
        f.name.replace("_", "-") for f in dataclasses.fields(TraceFLConfig) if f.compare
    )


def parse_run_config(run_config: Mapping[str, Any]) -> TraceFLConfig:
    """Build and validate a :class:`TraceFLConfig` from Flower's run config.

    Parameters
    ----------
    run_config
        ``context.run_config``: kebab-case keys to bool/int/float/str values.
        Missing keys take the dataclass defaults (the same as ``pyproject.toml``).

    Raises
    ------
    ConfigError
        Unknown key, wrong type or invalid value; the message names the key.
    """
    known = {f.name.replace("_", "-"): f for f in dataclasses.fields(TraceFLConfig)}
    values: dict[str, Any] = {}
    for key, raw in run_config.items():
        fld = known.get(key)
        if fld is None or not fld.compare:
            allowed = ", ".join(sorted(run_config_keys()))
            raise ConfigError(f"Unknown run-config key '{key}'. Known keys: {allowed}.")
        values[fld.name] = _coerce(key, raw, fld.type)
    cfg = TraceFLConfig(**values)
    faulty = _parse_faulty_clients(cfg)
    flip = _parse_label_flip(cfg.label_flip)
    cfg = dataclasses.replace(cfg, faulty_client_ids=faulty, label_flip_map=flip)
    validate(cfg)
    return cfg


def _coerce(key: str, raw: Any, type_name: Any) -> Any:
    """Convert a TOML value to the field's type, naming the key on failure."""
    type_name = str(type_name)
    if type_name == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ConfigError(f"'{key}' must be true or false, got {raw!r}.")
    if type_name == "int":
        if isinstance(raw, bool) or not (
            isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer())
        ):
            raise ConfigError(f"'{key}' must be an integer, got {raw!r}.")
        return int(raw)
    if type_name == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ConfigError(f"'{key}' must be a number, got {raw!r}.")
        return float(raw)
    if not isinstance(raw, str):
        raise ConfigError(f"'{key}' must be a string, got {raw!r}.")
    return raw


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"Invalid '{key}' = {value!r}: {allowed}.")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, value, f"allowed values are {', '.join(allowed)}")


def _parse_faulty_clients(cfg: TraceFLConfig) -> tuple[int, ...]:
    """Parse ``faulty-clients`` ("0,3") into sorted partition ids."""
    text = cfg.faulty_clients.strip()
    if not text:
        return ()
    ids: list[int] = []
    for tok in text.split(","):
        tok = tok.strip()
        _require(
            tok.isdigit(),
            "faulty-clients",
            cfg.faulty_clients,
            "expected comma-separated partition ids, e.g. '0' or '0,3'",
        )
        ids.append(int(tok))
    for pid in ids:
        _require(
            pid < cfg.num_clients,
            "faulty-clients",
            cfg.faulty_clients,
            f"partition ids must be in 0..{cfg.num_clients - 1} (num-clients)",
        )
    _require(
        len(set(ids)) == len(ids),
        "faulty-clients",
        cfg.faulty_clients,
        "partition ids must not repeat",
    )
    return tuple(sorted(ids))


def _parse_label_flip(text: str) -> dict[int, int]:
    """Parse ``label-flip`` ("1:0,2:0") into a source -> target label map."""
    flip: dict[int, int] = {}
    if not text.strip():
        return flip
    for pair in text.split(","):
        parts = [p.strip() for p in pair.split(":")]
        _require(
            len(parts) == 2 and all(p.isdigit() for p in parts),
            "label-flip",
            text,
            "expected comma-separated 'source:target' label pairs, e.g. '1:0,2:0'",
        )
        src, dst = int(parts[0]), int(parts[1])
        _require(src not in flip, "label-flip", text, f"label {src} is flipped twice")
        _require(src != dst, "label-flip", text, f"label {src} is flipped to itself")
        flip[src] = dst
    return flip


def validate(cfg: TraceFLConfig) -> None:
    """Check every value and cross-key constraint; raise :class:`ConfigError`."""
    from tracefl.registry import dataset_kind, dataset_num_classes, dataset_spec

    _one_of("dataset", cfg.dataset, DATASET_NAMES)
    kind = dataset_kind(cfg.dataset)
    if kind == "image":
        _one_of("model", cfg.model, IMAGE_MODEL_NAMES)
    else:
        _require(
            cfg.model in TEXT_MODEL_NAMES or "/" in cfg.model,
            "model",
            cfg.model,
            f"text dataset '{cfg.dataset}' needs a text model: "
            f"{', '.join(TEXT_MODEL_NAMES)} or a Hub checkpoint name 'org/name'",
        )
    _one_of("fusion", cfg.fusion, FUSIONS)
    _one_of("optimizer", cfg.optimizer, OPTIMIZERS)
    _one_of("device", cfg.device, DEVICES)
    _one_of("dp-clipping", cfg.dp_clipping, DP_CLIPPING_MODES)

    positive_ints = (
        "num_server_rounds",
        "num_clients",
        "local_epochs",
        "batch_size",
        "max_per_client_data_size",
        "max_server_data_size",
        "image_size",
        "max_seq_len",
        "provenance_inputs_per_label",
        "provenance_max_inputs",
        "label_min_count",
        "provenance_chunk_size",
        "faulty_max_inputs",
        "feddebug_num_inputs",
    )
    for name in positive_ints:
        value = getattr(cfg, name)
        _require(value >= 1, name.replace("_", "-"), value, "must be >= 1")
    for name in ("lr", "round_timeout"):
        value = getattr(cfg, name)
        _require(
            math.isfinite(value) and value > 0,
            name.replace("_", "-"),
            value,
            "must be a finite number > 0",
        )
    for name in ("momentum", "weight_decay", "proximal_mu", "noise_multiplier"):
        value = getattr(cfg, name)
        _require(
            math.isfinite(value) and value >= 0,
            name.replace("_", "-"),
            value,
            "must be a finite number >= 0",
        )
    _require(
        cfg.min_partition_size >= 0,
        "min-partition-size",
        cfg.min_partition_size,
        "must be >= 0",
    )
    _require(
        math.isfinite(cfg.dirichlet_alpha) and cfg.dirichlet_alpha > 0,
        "dirichlet-alpha",
        cfg.dirichlet_alpha,
        "must be a finite number > 0 (smaller is more non-IID)",
    )
    _require(
        0 < cfg.server_test_fraction < 1,
        "server-test-fraction",
        cfg.server_test_fraction,
        "must be strictly between 0 and 1",
    )
    _require(0 < cfg.beta_decay <= 1, "beta-decay", cfg.beta_decay, "must be in (0, 1]")
    _require(
        0 <= cfg.feddebug_na_threshold < 1,
        "feddebug-na-threshold",
        cfg.feddebug_na_threshold,
        "must be in [0, 1)",
    )
    for name in ("fraction_train", "fraction_evaluate"):
        value = getattr(cfg, name)
        _require(0 <= value <= 1, name.replace("_", "-"), value, "must be in [0, 1]")
    _require(
        cfg.fraction_train > 0,
        "fraction-train",
        cfg.fraction_train,
        "must be > 0: TraceFL needs trained client models",
    )
    for name in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        value = getattr(cfg, name)
        _require(
            0 <= value <= cfg.num_clients,
            name.replace("_", "-"),
            value,
            f"must be in 0..num-clients ({cfg.num_clients})",
        )
    _require(
        cfg.min_train_nodes >= 1, "min-train-nodes", cfg.min_train_nodes, "must be >= 1"
    )
    _require(
        cfg.min_available_nodes >= cfg.min_train_nodes,
        "min-available-nodes",
        cfg.min_available_nodes,
        f"must be >= min-train-nodes ({cfg.min_train_nodes})",
    )
    sampled = max(int(cfg.num_clients * cfg.fraction_train), cfg.min_train_nodes)
    _require(
        sampled >= 1,
        "fraction-train",
        cfg.fraction_train,
        f"fraction-train x num-clients ({cfg.num_clients}) samples no client",
    )
    if cfg.provenance_rounds.strip().lower() != "all":
        toks = [t.strip() for t in cfg.provenance_rounds.split(",") if t.strip()]
        _require(
            bool(toks) and all(t.isdigit() and int(t) >= 1 for t in toks),
            "provenance-rounds",
            cfg.provenance_rounds,
            "expected 'all' or comma-separated round numbers >= 1, e.g. '1,3'",
        )
        _require(
            max(int(t) for t in toks) <= cfg.num_server_rounds,
            "provenance-rounds",
            cfg.provenance_rounds,
            f"rounds must be <= num-server-rounds ({cfg.num_server_rounds})",
        )

    _validate_keep_models(cfg)

    if dataset_spec(cfg.dataset).source == "medmnist":
        _require(
            cfg.image_size in MEDMNIST_SIZES,
            "image-size",
            cfg.image_size,
            f"medmnist datasets come in {', '.join(map(str, MEDMNIST_SIZES))} px",
        )

    num_classes = dataset_num_classes(cfg.dataset)
    for src, dst in cfg.label_flip_map.items():
        for label in (src, dst):
            _require(
                label < num_classes,
                "label-flip",
                cfg.label_flip,
                f"labels must be in 0..{num_classes - 1} for dataset '{cfg.dataset}'",
            )
    _require(
        bool(cfg.faulty_client_ids) == bool(cfg.label_flip_map),
        "label-flip" if cfg.faulty_client_ids else "faulty-clients",
        cfg.label_flip if cfg.faulty_client_ids else cfg.faulty_clients,
        "faulty-clients and label-flip must be set together",
    )
    if cfg.faulty_client_ids:
        _require(
            len(cfg.faulty_client_ids) < cfg.num_clients,
            "faulty-clients",
            cfg.faulty_clients,
            "at least one client must be non-faulty",
        )

    if cfg.noise_multiplier > 0:
        _require(
            cfg.clipping_norm > 0,
            "clipping-norm",
            cfg.clipping_norm,
            "must be > 0 when noise-multiplier > 0 (noise is scaled by the clipping "
            "norm)",
        )
    _require(
        math.isfinite(cfg.clipping_norm) and cfg.clipping_norm >= 0,
        "clipping-norm",
        cfg.clipping_norm,
        "must be a finite number >= 0 (0 disables differential privacy)",
    )
    if cfg.dp_enabled:
        _require(
            cfg.fusion == "fedavg",
            "fusion",
            cfg.fusion,
            "differential privacy wraps FedAvg only; use fusion = 'fedavg'",
        )


# --- Keep models ----------------------------------------------------------------


def _validate_keep_models(cfg: TraceFLConfig) -> None:
    """Check the ``keep-*`` keys (what :mod:`tracefl.model_store` saves)."""
    text = cfg.keep_models_rounds.strip().lower()
    if text and text != "all":
        toks = [t.strip() for t in text.split(",") if t.strip()]
        _require(
            bool(toks) and all(t.isdigit() and int(t) >= 1 for t in toks),
            "keep-models-rounds",
            cfg.keep_models_rounds,
            "expected '' (none), 'all' or comma-separated round numbers >= 1, "
            "e.g. '1,3'",
        )
        _require(
            max(int(t) for t in toks) <= cfg.num_server_rounds,
            "keep-models-rounds",
            cfg.keep_models_rounds,
            f"rounds must be <= num-server-rounds ({cfg.num_server_rounds})",
        )
    _require(
        cfg.keep_models_max_files >= 1,
        "keep-models-max-files",
        cfg.keep_models_max_files,
        "must be >= 1",
    )
    _require(
        math.isfinite(cfg.keep_models_max_mb) and cfg.keep_models_max_mb > 0,
        "keep-models-max-mb",
        cfg.keep_models_max_mb,
        "must be a finite number > 0",
    )


# --- end keep models --------------------------------------------------------------
