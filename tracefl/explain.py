"""Explain saved models: which client is behind each prediction (Flower-free).

The library side of ``tracefl explain``: build the architecture, load the
global and client models (from files or a run's model store), load inputs (an
image folder, a tensor file, a text file or a split of the run's dataset), run
an attribution method and write the per-input client ranking.

Attribution methods are looked up by name in :data:`METHODS`, an explicit
registry: a method is a function ``(global_model, clients, inputs, options)
-> ProvenanceResult``. ``paper`` is the engine of the paper (Eq. 5-7).
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tracefl import localization as loc
from tracefl.attribution.fused_round import FusedRound, StateDict
from tracefl.config import TraceFLConfig
from tracefl.model_store import ModelStoreError, load_state_file, load_state_into
from tracefl.provenance import NeuronProvenance, ProvenanceResult
from tracefl.provenance.validation import Inputs
from tracefl.registry import DatasetSpec, run_dataset_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEXT_INPUT_KEYS = ("input_ids", "attention_mask")


class ExplainError(ValueError):
    """Bad explain request: the message names the option or file at fault."""


# ------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExplainOptions:
    """Engine options of one explanation.

    Attributes
    ----------
    method
        Name in :data:`METHODS`.
    target
        Which logit is explained: ``"predicted"`` (the argmax, the paper's
        choice), ``"true"`` (the input's label) or a class index.
    decay, enable_beta
        Layer importance ``beta_l = decay ** (L - 1 - l)`` (or 1 if disabled).
    scale_by_data_share
        Scale client ``k``'s terms by ``p_k = n_k / n`` (the paper's Eq. 5).
    device
        ``cpu``, ``cuda`` or ``cuda:<i>``.
    chunk_size
        Inputs per forward/backward chunk (bounds memory).
    client_chunk_size
        Clients per chunk, for engines that stream clients (``None``: all).

    """

    method: str = "paper"
    target: str | int = "predicted"
    decay: float = 0.9
    enable_beta: bool = True
    scale_by_data_share: bool = True
    device: str = "cpu"
    chunk_size: int = 32
    client_chunk_size: int | None = None


@dataclass(frozen=True)
class ClientSet:
    """The clients of one round as a method sees them.

    Attributes
    ----------
    client_ids
        ``K`` names.
    states
        ``K`` state dicts (the models as fused).
    weights
        ``K`` positive ``n_k`` (training samples).
    fused
        The whole round when it came from a model store (methods that need
        ``theta_{t-1}`` or the fusion shares read it); ``None`` for loose files.

    """

    client_ids: tuple[str, ...]
    states: tuple[StateDict, ...]
    weights: tuple[float, ...]
    fused: FusedRound | None = None

    @classmethod
    def from_round(cls, fused: FusedRound) -> ClientSet:
        """The clients of a saved round, weighted by their ``num_examples``."""
        return cls(
            client_ids=fused.client_ids,
            states=fused.clients,
            weights=tuple(float(n) for n in fused.num_examples),
            fused=fused,
        )


@dataclass(frozen=True)
class InputBatch:
    """Inputs to explain.

    Attributes
    ----------
    features
        ``(B, ...)`` tensor, or a dict of ``(B, L)`` tensors for text models.
    names
        ``B`` names (file names, ``test[i]``, ``line 3``).
    labels
        ``(B,)`` int64 true labels, or ``None`` when unknown.
    images
        ``(B, H, W)`` or ``(B, H, W, C)`` uint8 pictures for the view, if any.

    """

    features: Tensor | dict[str, Tensor]
    names: tuple[str, ...]
    labels: Tensor | None = None
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


# ------------------------------------------------------------------- methods


AttributionMethod = Callable[
    [nn.Module, ClientSet, Inputs, Tensor | None, ExplainOptions], ProvenanceResult
]


def paper_method(
    model: nn.Module,
    clients: ClientSet,
    inputs: Inputs,
    target: Tensor | None,
    options: ExplainOptions,
) -> ProvenanceResult:
    """The paper's neuron provenance (Eq. 5-7) via :class:`NeuronProvenance`.

    ``target`` is ``None`` (explain the predicted class) or ``(B,)`` class
    indices; the latter, and ``client_chunk_size``, need an engine that
    accepts them, else :class:`ExplainError` says so.
    """
    extra: dict[str, Any] = {}
    if options.client_chunk_size is not None:
        _require_parameter(NeuronProvenance.__init__, "client_chunk_size")
        extra["client_chunk_size"] = options.client_chunk_size
    engine = NeuronProvenance(
        model,
        list(clients.states),
        list(clients.weights),
        list(clients.client_ids),
        decay=options.decay,
        enable_beta=options.enable_beta,
        scale_by_data_share=options.scale_by_data_share,
        device=options.device,
        chunk_size=options.chunk_size,
        **extra,
    )
    if target is None:
        return engine.attribute(inputs)
    _require_parameter(NeuronProvenance.attribute, "target")
    return engine.attribute(inputs, target=target)


def _require_parameter(func: Callable[..., Any], name: str) -> None:
    if name not in inspect.signature(func).parameters:
        option = {"target": "--target", "client_chunk_size": "--client-chunk-size"}
        raise ExplainError(
            f"{option.get(name, name)}: this version of the provenance engine "
            f"does not accept '{name}'; leave the option at its default"
        )


#: Attribution methods by name (explicit; extended by adding entries here).
METHODS: dict[str, AttributionMethod] = {"paper": paper_method}


# -------------------------------------------------------------- architecture


def architecture_from_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that rebuild a run's model: dataset, model, image size, length."""
    return {
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "image-size": int(cfg.get("image-size", 28)),
        "max-seq-len": int(cfg.get("max-seq-len", 128)),
    }


def dataset_spec_of(architecture: Mapping[str, Any]) -> DatasetSpec:
    """The dataset spec of an architecture mapping (image size applied)."""
    return run_dataset_spec(
        str(architecture["dataset"]), int(architecture.get("image-size", 28))
    )


def build_architecture(architecture: Mapping[str, Any]) -> nn.Module:
    """A fresh model from ``{"dataset", "model", "image-size", "max-seq-len"}``."""
    from tracefl.model import build_model

    return build_model(
        str(architecture["model"]),
        dataset_spec_of(architecture),
        max_seq_len=int(architecture.get("max-seq-len", 128)),
    )


def import_factory(spec: str) -> Callable[[], nn.Module]:
    """Import ``"package.module:callable"``, a zero-argument model factory.

    Raises
    ------
    ExplainError
        Malformed spec, module or attribute not found, or not callable.

    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExplainError(
            f"--architecture {spec!r}: expected 'package.module:callable'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ExplainError(f"--architecture {spec!r}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ExplainError(
            f"--architecture {spec!r}: '{attr}' is not a callable in {module_name}"
        )
    return factory


def load_global_model(
    factory: Callable[[], nn.Module], state: Mapping[str, Tensor], owner: str
) -> nn.Module:
    """A model from ``factory`` with ``state`` loaded (keys and shapes checked)."""
    model = factory()
    if not isinstance(model, nn.Module):
        raise ExplainError(
            f"the architecture factory returned a {type(model).__name__}, "
            "not an nn.Module"
        )
    load_state_into(model, state, owner)
    return model


# -------------------------------------------------------------------- clients


def load_client_files(
    paths: Sequence[Path],
    client_ids: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    *,
    weights_needed: bool = True,
) -> ClientSet:
    """Client models from files, with their ids and ``n_k``.

    ``weights`` may be omitted only when ``weights_needed`` is False (the data
    share is not used); every client then weighs 1.

    Raises
    ------
    ExplainError
        Counts that do not match, missing weights where they are used.
    ModelStoreError
        A file is missing, unsafe or unreadable.

    """
    if not paths:
        raise ExplainError("--clients: give at least one client model file")
    ids = (
        tuple(client_ids)
        if client_ids is not None
        else tuple(Path(p).stem for p in paths)
    )
    if len(ids) != len(paths):
        raise ExplainError(
            f"--client-ids has {len(ids)} names for {len(paths)} client files"
        )
    if len(set(ids)) != len(ids):
        raise ExplainError(
            f"client ids must be unique, got {list(ids)} (use --client-ids)"
        )
    if weights is None:
        if weights_needed:
            raise ExplainError(
                "--client-weights: the data share p_k = n_k / n is on, so every "
                "client's number of training samples n_k is needed (or pass --no-pk)"
            )
        weights = [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ExplainError(
            f"--client-weights has {len(weights)} values for {len(paths)} clients"
        )
    for cid, w in zip(ids, weights, strict=True):
        if not (math.isfinite(float(w)) and float(w) > 0):
            raise ExplainError(
                f"--client-weights: weight of client '{cid}' must be a positive "
                f"number, got {w}"
            )
    states = tuple(load_state_file(Path(p)) for p in paths)
    return ClientSet(ids, states, tuple(float(w) for w in weights))


def parse_client_weights(text: str) -> list[float] | dict[str, float]:
    """``"412,380"``, or a JSON file: a list, or ``{client_id: n_k}``."""
    path = Path(text)
    if text.endswith(".json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ExplainError(f"--client-weights {text}: {err}") from err
        if isinstance(data, list):
            return [float(v) for v in data]
        if isinstance(data, dict):
            return {str(k): float(v) for k, v in data.items()}
        raise ExplainError(
            f"--client-weights {text}: expected a JSON list or object of numbers"
        )
    try:
        return [float(tok) for tok in text.split(",") if tok.strip()]
    except ValueError as err:
        raise ExplainError(
            f"--client-weights {text!r}: expected comma-separated numbers or a "
            ".json file"
        ) from err


# --------------------------------------------------------------------- inputs


def load_image_folder(folder: Path, spec: DatasetSpec, resize: bool) -> InputBatch:
    """Images of a folder, normalised as the dataset's training images.

    ``folder/*.png`` (unlabelled) or ``folder/<label>/*.png`` (labelled by the
    sub-folder: a class index or one of the dataset's class names). Images are
    converted to the dataset's channels; a size other than the dataset's is an
    error unless ``resize``.
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ExplainError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    labelled: list[tuple[Path, int | None]] = [(p, None) for p in files]
    for sub in subdirs:
        label = _label_of_folder(sub.name, spec)
        labelled += [
            (p, label)
            for p in sorted(sub.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
    if not labelled:
        raise ExplainError(
            f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})"
        )
    if files and subdirs:
        raise ExplainError(
            f"--images {folder}: mixes loose images and label sub-folders; use one"
        )
    mode = "L" if spec.channels == 1 else "RGB"
    size = (spec.image_size, spec.image_size)
    pictures = []
    for path, _ in labelled:
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != size:
                    if not resize:
                        raise ExplainError(
                            f"--images: {path} is {img.size[0]}x{img.size[1]} px "
                            f"but dataset '{spec.name}' images are "
                            f"{size[0]}x{size[1]}; pass --resize to resize"
                        )
                    img = img.resize(size, Image.Resampling.BILINEAR)
                pictures.append(np.asarray(img, dtype=np.uint8))
        except OSError as err:
            raise ExplainError(f"--images: cannot read {path}: {err}") from err
    images = np.stack(pictures)
    labels = [label for _, label in labelled]
    return InputBatch(
        features=_normalise_images(images, spec),
        names=tuple(str(p.relative_to(folder)) for p, _ in labelled),
        labels=None if labels[0] is None else torch.tensor(labels, dtype=torch.int64),
        images=images,
    )


def _label_of_folder(name: str, spec: DatasetSpec) -> int:
    if name.isdigit() and int(name) < spec.num_classes:
        return int(name)
    if name in spec.label_names:
        return spec.label_names.index(name)
    raise ExplainError(
        f"--images: sub-folder '{name}' is neither a class index "
        f"0..{spec.num_classes - 1} nor a class name of '{spec.name}'"
    )


def _normalise_images(images: np.ndarray, spec: DatasetSpec) -> Tensor:
    from tracefl.dataset import images_to_tensor

    return images_to_tensor(images, spec)


def load_tensor_file(path: Path) -> InputBatch:
    """Model-ready inputs from ``.safetensors`` or ``.pt`` (``weights_only``).

    The file holds one tensor ``(B, ...)``; or a mapping with ``inputs`` (or
    ``input_ids`` + ``attention_mask`` for text models) and optionally
    ``labels`` ``(B,)``.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_state_file(path)
        else:
            if not path.is_file():
                raise ExplainError(f"--tensors {path}: no such file")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ModelStoreError as err:
        raise ExplainError(f"--tensors: {err}") from err
    except Exception as err:
        raise ExplainError(
            f"--tensors {path}: not a tensor file readable with "
            f"torch.load(weights_only=True): {type(err).__name__}"
        ) from err
    labels = None
    if isinstance(obj, Tensor):
        features: Tensor | dict[str, Tensor] = obj
    elif isinstance(obj, Mapping):
        labels = obj.get("labels")
        if "inputs" in obj:
            features = obj["inputs"]
        elif all(k in obj for k in TEXT_INPUT_KEYS):
            features = {k: obj[k] for k in TEXT_INPUT_KEYS}
        else:
            others = [k for k in obj if k != "labels"]
            if len(others) != 1:
                raise ExplainError(
                    f"--tensors {path}: expected a key 'inputs' (or "
                    f"{' + '.join(TEXT_INPUT_KEYS)}), found {sorted(obj)}"
                )
            features = obj[others[0]]
    else:
        raise ExplainError(
            f"--tensors {path}: holds a {type(obj).__name__}, not tensors"
        )
    batch = (
        next(iter(features.values())).shape[0]
        if isinstance(features, Mapping)
        else features.shape[0]
        if features.dim() > 0
        else 0
    )
    if batch == 0:
        raise ExplainError(f"--tensors {path}: holds no input")
    if labels is not None and (
        not isinstance(labels, Tensor) or labels.shape != (batch,)
    ):
        raise ExplainError(f"--tensors {path}: 'labels' must have shape ({batch},)")
    return InputBatch(
        features=features,
        names=tuple(f"{path.name}[{i}]" for i in range(batch)),
        labels=None if labels is None else labels.to(torch.int64),
    )


def load_text_file(path: Path, model_name: str, max_seq_len: int) -> InputBatch:
    """One text per line, tokenised for ``model_name``.

    A line ``<label><TAB><text>`` (an integer, a tab, the text) carries its label;
    either every non-empty line has one or none does.
    """
    from tracefl.text import encode_texts

    path = Path(path)
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln]
    except OSError as err:
        raise ExplainError(f"--texts {path}: {err}") from err
    if not lines:
        raise ExplainError(f"--texts {path}: no text")
    parts = [ln.split("\t", 1) for ln in lines]
    has_label = [len(p) == 2 and p[0].strip().isdigit() for p in parts]
    if any(has_label) and not all(has_label):
        raise ExplainError(
            f"--texts {path}: some lines start with '<label>\\t' and some do not"
        )
    texts = [
        p[1] if labelled else ln
        for p, ln, labelled in zip(parts, lines, has_label, strict=True)
    ]
    labels = (
        torch.tensor([int(p[0]) for p in parts], dtype=torch.int64)
        if all(has_label)
        else None
    )
    return InputBatch(
        features=encode_texts(texts, model_name, max_seq_len),
        names=tuple(f"line {i + 1}" for i in range(len(texts))),
        labels=labels,
    )


def load_split(
    cfg: TraceFLConfig, split: str, indices: Sequence[int] | None, limit: int
) -> InputBatch:
    """Inputs from the run's own data: ``test`` or ``client-<i>``.

    ``test`` is the server's held-out test split exactly as the run used it
    (same seed, same cap); ``client-<i>`` is partition ``i``'s training data
    (as that client trained on it, labels flipped if it was faulty).
    ``indices`` selects rows; otherwise the first ``limit`` rows.
    """
    from tracefl.dataset import load_client_data, load_server_test

    if split == "test":
        data = load_server_test(cfg)
    elif split.startswith("client-") and split.removeprefix("client-").isdigit():
        pid = int(split.removeprefix("client-"))
        if pid >= cfg.num_clients:
            raise ExplainError(
                f"--split {split}: the run has clients 0..{cfg.num_clients - 1}"
            )
        data = load_client_data(cfg, pid, cfg.num_clients).train
    else:
        raise ExplainError(f"--split {split!r}: expected 'test' or 'client-<i>'")
    n = len(data)
    if indices is None:
        rows = list(range(min(limit, n)))
    else:
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ExplainError(
                f"--indices {bad[0]}: split '{split}' has rows 0..{n - 1}"
            )
        rows = list(indices)
    if not rows:
        raise ExplainError(f"--split {split}: no row selected")
    index = torch.as_tensor(rows, dtype=torch.int64)
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    features = data.select_features(index)
    images = None
    if spec.kind == "image" and isinstance(features, Tensor):
        images = _denormalise(features, spec)
    return InputBatch(
        features=features,
        names=tuple(f"{split}[{i}]" for i in rows),
        labels=data.labels[index].clone(),
        images=images,
    )


def _denormalise(features: Tensor, spec: DatasetSpec) -> np.ndarray:
    """Model inputs (B, C, H, W) back to uint8 pictures for display."""
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    x = (features.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    x = x.permute(0, 2, 3, 1).numpy()
    return x[..., 0] if x.shape[-1] == 1 else x


# ---------------------------------------------------------------- explanation


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain`, with what produced it.

    Attributes
    ----------
    result
        The method's :class:`ProvenanceResult` (``probs``/``scores`` (B, K)).
    inputs
        The explained inputs (names, labels).
    clients
        Client ids and weights.
    options
        The options used.
    target
        ``(B,)`` explained class per input, or ``None`` (predicted class).
    label_counts
        ``(K, C)`` the clients' label histograms when known (from a run).
    source
        Where the models came from (files, run directory, round).

    """

    result: ProvenanceResult
    inputs: InputBatch
    clients: ClientSet
    options: ExplainOptions
    target: Tensor | None = None
    label_counts: np.ndarray | None = None
    source: Mapping[str, Any] | None = None

    def ranking_rows(self) -> list[dict[str, Any]]:
        """Long-format ranking: one row per (input, client), best client first."""
        probs = self.result.probs.double().cpu()
        scores = self.result.scores.double().cpu()
        order = loc.rank_clients(probs)
        preds = self.result.predicted_labels.cpu().tolist()
        labels = None if self.inputs.labels is None else self.inputs.labels.tolist()
        verdicts = self._verdicts()
        rows = []
        for b, name in enumerate(self.inputs.names):
            for rank, k in enumerate(order[b].tolist(), 1):
                row: dict[str, Any] = {
                    "input": b,
                    "name": name,
                    "true_label": "" if labels is None else labels[b],
                    "predicted_label": preds[b],
                    "explained_label": preds[b]
                    if self.target is None
                    else int(self.target[b]),
                    "rank": rank,
                    "client_id": self.clients.client_ids[k],
                    "probability": float(probs[b, k]),
                    "score": float(scores[b, k]),
                }
                for key, values in verdicts.items():
                    row[key] = bool(values[b]) if rank == 1 else ""
                rows.append(row)
        return rows

    def _verdicts(self) -> dict[str, np.ndarray]:
        """Paper/strict correctness of the top client, when counts and labels exist."""
        if self.label_counts is None or self.inputs.labels is None:
            return {}
        traced = self.result.traced.cpu().numpy()
        labels = self.inputs.labels.cpu().numpy()
        return {
            "paper_correct": loc.paper_correct(traced, labels, self.label_counts, 1),
            "strict_correct": loc.strict_correct(traced, labels, self.label_counts),
        }

    def to_json(self) -> dict[str, Any]:
        """Everything as plain JSON: options, clients, per-input ranking."""
        rows = self.ranking_rows()
        per_input: list[dict[str, Any]] = []
        for row in rows:
            if row["rank"] == 1:
                per_input.append(
                    {
                        k: row[k]
                        for k in (
                            "input",
                            "name",
                            "true_label",
                            "predicted_label",
                            "explained_label",
                        )
                    }
                    | {"traced_client": row["client_id"], "ranking": []}
                    | {
                        k: row[k]
                        for k in ("paper_correct", "strict_correct")
                        if k in row
                    }
                )
            per_input[-1]["ranking"].append(
                {
                    "client_id": row["client_id"],
                    "probability": row["probability"],
                    "score": row["score"],
                }
            )
        total = sum(self.clients.weights)
        return {
            "method": self.options.method,
            "options": asdict(self.options),
            "source": dict(self.source or {}),
            "clients": [
                {"client_id": cid, "weight": w, "data_share": w / total}
                for cid, w in zip(
                    self.clients.client_ids, self.clients.weights, strict=True
                )
            ],
            "layers": list(self.result.layer_names),
            "inputs": per_input,
        }


def explain(
    model: nn.Module,
    clients: ClientSet,
    inputs: InputBatch,
    options: ExplainOptions,
    *,
    label_counts: np.ndarray | None = None,
    source: Mapping[str, Any] | None = None,
) -> Explanation:
    """Attribute the global model's prediction on every input to the clients.

    Parameters
    ----------
    model
        The global model (weights loaded).
    clients
        The round's client models, ids and ``n_k``.
    inputs
        What to explain.
    options
        Method and engine options.
    label_counts
        ``(K, C)`` the clients' label histograms, if known (adds the paper and
        strict verdicts and the label-share panel of the view).
    source
        Free-form provenance of the models, recorded in the JSON.

    Raises
    ------
    ExplainError
        Unknown method, a target that needs labels the inputs lack, a class
        out of range.

    """
    method = METHODS.get(options.method)
    if method is None:
        raise ExplainError(
            f"--method {options.method!r}: known methods are {', '.join(METHODS)}"
        )
    if label_counts is not None and label_counts.shape[0] != len(clients.client_ids):
        raise ExplainError(
            f"label counts have {label_counts.shape[0]} rows for "
            f"{len(clients.client_ids)} clients"
        )
    target = _target_tensor(options.target, inputs)
    result = method(model, clients, inputs.features, target, options)
    return Explanation(
        result=result,
        inputs=inputs,
        clients=clients,
        options=options,
        target=target,
        label_counts=label_counts,
        source=source,
    )


def _target_tensor(target: str | int, inputs: InputBatch) -> Tensor | None:
    if target == "predicted":
        return None
    if target == "true":
        if inputs.labels is None:
            raise ExplainError(
                "--target true: the inputs carry no labels (use a labelled image "
                "folder, a tensor file with 'labels', '<label>\\t<text>' lines or "
                "--split)"
            )
        return inputs.labels.clone()
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return torch.full((len(inputs),), target, dtype=torch.int64)
    raise ExplainError(
        f"--target {target!r}: expected 'predicted', 'true' or a class index >= 0"
    )


# --------------------------------------------------------------------- output

RANKING_COLUMNS = (
    "input",
    "name",
    "true_label",
    "predicted_label",
    "explained_label",
    "rank",
    "client_id",
    "probability",
    "score",
    "paper_correct",
    "strict_correct",
)


def write_explanation(
    explanation: Explanation,
    out_dir: Path,
    *,
    plot: bool = True,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``ranking.csv``, ``explanation.json`` and ``explanation.{png,pdf}``.

    The figure is the per-input view: client probabilities per input (the top
    client boxed), the inputs' pictures for image data, and each client's
    share of every label when the label counts are known.
    """
    from tracefl.plotting import plot_client_probabilities
    from tracefl.results_io import write_csv, write_json

    out_dir = Path(out_dir)
    rows = explanation.ranking_rows()
    columns = [c for c in RANKING_COLUMNS if any(c in r for r in rows)]
    paths = [out_dir / "ranking.csv", out_dir / "explanation.json"]
    write_csv(paths[0], rows, columns)
    write_json(paths[1], explanation.to_json())
    if not plot:
        return paths
    inputs = explanation.inputs
    preds = explanation.result.predicted_labels.cpu().tolist()
    names = list(class_names) if class_names else None

    def label(c: int) -> str:
        return names[c] if names and 0 <= c < len(names) else str(c)

    row_labels = [
        f"{name} (y={label(int(inputs.labels[b]))}, pred={label(preds[b])})"
        if inputs.labels is not None
        else f"{name} (pred={label(preds[b])})"
        for b, name in enumerate(inputs.names)
    ]
    share = None
    if explanation.label_counts is not None:
        counts = explanation.label_counts.astype(float)
        share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    title = f"{explanation.options.method}: client probability per input"
    paths += plot_client_probabilities(
        explanation.result.probs.double().cpu().numpy(),
        row_labels,
        list(explanation.clients.client_ids),
        out_dir / "explanation",
        title=title,
        label_share=share,
        class_labels=names,
        images=inputs.images,
    )
    return paths
