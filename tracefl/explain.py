"""Explain saved models: which client is behind each prediction (Flower-free).

The library side of ``tracefl explain``: build the architecture, load the
models, load inputs (an image folder, a tensor file, a text file or a split of
the run's dataset), run an attribution method of
:data:`tracefl.attribution.METHODS` and write the per-input client ranking.

Which methods run on saved models, by the state they need
(:attr:`~tracefl.attribution.MethodSpec.state`):

* per-round (``paper``, ``update``, ``loo``): one round's
  :class:`~tracefl.attribution.FusedRound`, from a run's model store or built
  from loose files as a FedAvg round (:class:`RoundModels`), explained by
  :func:`explain_round`;
* ``cumulative``: a run's :class:`~tracefl.attribution.CumulativeUpdates`
  (``<run-dir>/cumulative/``) against any model, by :func:`explain_cumulative`;
* the online cross-round methods accumulate during training on the run's fixed
  query inputs only: they are refused here (their answers are in the run's
  ``scores.csv``; ``cumulative`` explains new inputs).

Pseudo-clients (``server``, ``noise``) are reported beside the clients, never
ranked as the answer.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tracefl import localization as loc
from tracefl.attribution import (
    METHODS,
    ROUND_METHODS,
    AttributionResult,
    CumulativeMethod,
    CumulativeUpdates,
    FusedRound,
    StateDict,
    create_round_method,
    floating_entries,
    method_spec,
)
from tracefl.attribution.registry import STORE_STATE
from tracefl.config import TraceFLConfig
from tracefl.model_store import (
    ModelStore,
    ModelStoreError,
    check_state,
    load_state_file,
    load_state_into,
)
from tracefl.output_dir import CUMULATIVE_DIR
from tracefl.registry import DatasetSpec, run_dataset_spec

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEXT_INPUT_KEYS = ("input_ids", "attention_mask")
#: Where a run keeps its cumulative store (``<output-dir>/cumulative``, written
#: after training when ``methods`` names ``cumulative``).


class ExplainError(ValueError):
    """Bad explain request: the message names the option or file at fault."""


# ------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExplainOptions:
    """What to run on the models.

    Attributes
    ----------
    method
        A name in :data:`tracefl.attribution.METHODS` that runs on saved models
        (``paper``, ``update``, ``loo``, ``cumulative``).
    target
        Which class is explained: ``"predicted"`` (the argmax, the paper's
        choice), ``"true"`` (the input's label) or a class index.
    device
        ``cpu``, ``cuda`` or ``cuda:<i>``.
    chunk_size
        Inputs per forward/backward chunk (bounds memory).
    method_options
        Further keyword options of the method's constructor (e.g. the paper
        method's ``scale_by_data_share``, ``decay``, ``enable_beta``,
        ``layers``, ``include_server``); unset ones keep the method's default.

    """

    method: str = "paper"
    target: str | int = "predicted"
    device: str = "cpu"
    chunk_size: int = 32
    method_options: Mapping[str, Any] = field(default_factory=dict)


def method_option_names(method: str) -> tuple[str, ...]:
    """Keyword options a method's constructor takes (beyond ``device``, chunks).

    Raises
    ------
    ExplainError
        Unknown method, or one that does not run on saved models.

    """
    cls = _method_class(method)
    return tuple(
        name
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
        and name not in ("device", "chunk_size")
    )


def _method_class(method: str) -> type:
    if method not in METHODS:
        raise ExplainError(
            f"--method {method!r}: known methods are {', '.join(METHODS)}"
        )
    state = method_spec(method).state
    if state is None:
        return ROUND_METHODS[method]
    if state == STORE_STATE:
        return CumulativeMethod
    raise ExplainError(
        f"--method {method}: this method accumulates its scores during training, "
        "one term per round on the run's fixed query inputs; it cannot run on "
        "saved models. Its answers for those inputs are in the run's scores.csv "
        f"(method = {method}); to explain new inputs with the whole training, use "
        "--method cumulative (needs a run with 'cumulative' in its methods)."
    )


def _constructor_options(options: ExplainOptions) -> dict[str, Any]:
    allowed = method_option_names(options.method)
    for name in options.method_options:
        if name not in allowed:
            raise ExplainError(
                f"method {options.method!r} has no option {name!r}; its options "
                f"are {list(allowed)}"
            )
    return {
        "device": options.device,
        "chunk_size": options.chunk_size,
        **options.method_options,
    }


# --------------------------------------------------------------------- models


@dataclass(frozen=True)
class RoundModels:
    """One round's models as the per-round methods read them.

    Attributes
    ----------
    fused
        The round's terms ``theta_t = sum_k A_k theta_k + r`` with
        ``theta_{t-1}`` (``previous``).
    previous_known
        Whether ``fused.previous`` really is the model the round started from.
        Loose files without one put the aggregate there as a stand-in, which
        the paper method never reads; :func:`explain_round` refuses the
        methods that would.

    """

    fused: FusedRound
    previous_known: bool = True

    @classmethod
    def from_store(cls, store: ModelStore, server_round: int) -> RoundModels:
        """A saved round of a run's model store."""
        return cls(store.load_round(server_round))

    @classmethod
    def from_files(
        cls,
        model: nn.Module,
        clients: ClientFiles,
        previous: Mapping[str, Tensor] | None = None,
    ) -> RoundModels:
        """A FedAvg round of loose files: ``A_k = n_k / n``, ``theta_t`` = ``model``.

        The residual ``r = theta_t - sum_k p_k theta_k`` is what the weighted
        average of the files does not explain (reported as ``server``).
        """
        aggregate = floating_entries(model.state_dict())
        fused = FusedRound.weighted_average(
            0,
            "fedavg",
            clients.client_ids,
            clients.num_examples,
            previous if previous is not None else aggregate,
            clients.states,
            aggregate,
        )
        return cls(fused, previous_known=previous is not None)

    def with_aggregate(self, model: nn.Module) -> RoundModels:
        """The same clients against another global model (``--global``).

        ``theta_t`` becomes ``model``'s state and the residual is recomputed
        from it, so ``server`` holds what the round's clients do not explain.
        """
        fused = self.fused
        own = floating_entries(model.state_dict())
        aggregate = {key: own[key] for key in fused.previous}
        residual = {
            key: aggregate[key].double()
            - sum(
                s[key].double() * c[key].double()
                for s, c in zip(fused.shares, fused.clients, strict=True)
            )
            for key in fused.previous
        }
        return dataclasses.replace(
            self,
            fused=dataclasses.replace(fused, aggregate=aggregate, residual=residual),
        )


@dataclass(frozen=True)
class ClientFiles:
    """Client models read from files.

    Attributes
    ----------
    client_ids
        ``K`` names.
    states
        ``K`` state dicts (checked against the architecture).
    num_examples
        ``K`` positive ``n_k`` (1 each when the data share is not used).

    """

    client_ids: tuple[str, ...]
    states: tuple[StateDict, ...]
    num_examples: tuple[int, ...]


def load_client_files(
    model: nn.Module,
    paths: Sequence[Path],
    client_ids: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    *,
    weights_needed: bool = True,
) -> ClientFiles:
    """Client models from files, with their ids and ``n_k``.

    ``weights`` may be omitted only when ``weights_needed`` is False (the
    method does not use the data shares); every client then weighs 1.

    Raises
    ------
    ExplainError
        Counts that do not match, missing weights where they are used, a
        weight that is not a positive whole number of samples.
    ModelStoreError
        A file is missing, unsafe, unreadable, or does not fit the model.

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
                "--client-weights: the method uses the data shares p_k = n_k / n, "
                "so every client's number of training samples n_k is needed (or "
                "pass --no-pk with the paper method)"
            )
        weights = [1] * len(paths)
    if len(weights) != len(paths):
        raise ExplainError(
            f"--client-weights has {len(weights)} values for {len(paths)} clients"
        )
    counts = []
    for cid, w in zip(ids, weights, strict=True):
        value = float(w)
        if not (math.isfinite(value) and value > 0 and value.is_integer()):
            raise ExplainError(
                f"--client-weights: n_k of client '{cid}' must be a positive whole "
                f"number of training samples, got {w}"
            )
        counts.append(int(value))
    expected = model.state_dict()
    states = []
    for cid, path in zip(ids, paths, strict=True):
        state = load_state_file(Path(path))
        check_state(expected, state, f"client '{cid}' ({path})")
        states.append(state)
    return ClientFiles(ids, tuple(states), tuple(counts))


def load_previous_file(model: nn.Module, path: Path) -> StateDict:
    """``theta_{t-1}`` from a file (``--previous``), checked against the model."""
    state = load_state_file(Path(path))
    check_state(model.state_dict(), state, f"previous model {path}")
    return state


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


def load_cumulative(run_dir: Path) -> CumulativeUpdates:
    """A run's cumulative store (``<run-dir>/cumulative``).

    Raises
    ------
    ExplainError
        The run kept none (``cumulative`` not in its ``methods``).

    """
    folder = Path(run_dir) / CUMULATIVE_DIR
    if not (folder / "manifest.json").is_file():
        raise ExplainError(
            f"--method cumulative: no cumulative store in {folder}; run with "
            "'cumulative' in methods (the store U_k = sum_t A_k^t Delta_k^t is "
            "saved after training)"
        )
    return CumulativeUpdates.load(folder)


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


# --------------------------------------------------------------------- inputs


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

#: What a per-round method reads of ``theta_{t-1}`` (refused without it).
READS_PREVIOUS = {
    "update": "each client's update Delta_k = theta_k - theta_{t-1}",
}


@dataclass(frozen=True)
class Explanation:
    """The result of :func:`explain_round` or :func:`explain_cumulative`.

    Attributes
    ----------
    result
        The method's :class:`~tracefl.attribution.AttributionResult`:
        ``scores`` ``(B, K')`` (clients, then pseudo-clients), ``probs``
        ``(B, K)`` or ``None``, ``traced`` ``(B,)``.
    inputs
        The explained inputs (names, labels).
    options
        The options used.
    num_examples
        ``K`` training-set sizes ``n_k`` of the clients, when known.
    label_counts
        ``(K, C)`` the clients' label histograms, when known (from a run).
    source
        Where the models came from (files, run directory, round).

    """

    result: AttributionResult
    inputs: InputBatch
    options: ExplainOptions
    num_examples: tuple[int, ...] | None = None
    label_counts: np.ndarray | None = None
    source: Mapping[str, Any] | None = None

    def ranking_rows(self) -> list[dict[str, Any]]:
        """Long format: per input its clients, best first, then pseudo-clients.

        Clients are ranked by score (for the paper method the same order as
        its probabilities), so rank 1 is the method's traced client.
        Pseudo-clients (``server``, ``noise``) follow with an empty rank: they
        are reported, never the answer.
        """
        res = self.result
        scores = res.scores.double().cpu()
        probs = None if res.probs is None else res.probs.double().cpu()
        order = loc.rank_clients(res.client_scores)
        preds = res.predicted_labels.cpu().tolist()
        targets = res.targets.cpu().tolist()
        labels = None if self.inputs.labels is None else self.inputs.labels.tolist()
        verdicts = self._verdicts()
        rows = []
        for b, name in enumerate(self.inputs.names):
            columns = [*order[b].tolist(), *range(res.num_clients, len(res.column_ids))]
            for position, k in enumerate(columns):
                ranked = k < res.num_clients
                row: dict[str, Any] = {
                    "input": b,
                    "name": name,
                    "true_label": "" if labels is None else labels[b],
                    "predicted_label": preds[b],
                    "explained_label": targets[b],
                    "rank": position + 1 if ranked else "",
                    "client_id": res.column_ids[k],
                    "probability": float(probs[b, k])
                    if probs is not None and ranked
                    else "",
                    "score": float(scores[b, k]),
                }
                for key, values in verdicts.items():
                    row[key] = bool(values[b]) if position == 0 else ""
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
        res = self.result
        per_input: list[dict[str, Any]] = []
        pseudo_wins = res.pseudo_would_win.tolist()
        for row in self.ranking_rows():
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
                    | {"traced_client": row["client_id"]}
                    | {
                        k: row[k]
                        for k in ("paper_correct", "strict_correct")
                        if k in row
                    }
                    | {
                        "pseudo_client_would_win": bool(pseudo_wins[row["input"]]),
                        "ranking": [],
                        "pseudo_clients": [],
                    }
                )
            entry = {"client_id": row["client_id"], "score": row["score"]}
            if row["rank"] == "":
                per_input[-1]["pseudo_clients"].append(entry)
            else:
                probability = row["probability"]
                entry["probability"] = None if probability == "" else probability
                per_input[-1]["ranking"].append(entry)
        clients: list[dict[str, Any]] = [{"client_id": c} for c in res.client_ids]
        if self.num_examples is not None:
            total = sum(self.num_examples)
            for entry, n in zip(clients, self.num_examples, strict=True):
                entry |= {"num_examples": n, "data_share": n / total}
        return {
            "method": self.options.method,
            "options": dataclasses.asdict(self.options),
            "source": dict(self.source or {}),
            "ranked_by": "score",
            "has_probabilities": res.probs is not None,
            "clients": clients,
            "pseudo_clients": list(res.column_ids[res.num_clients :]),
            "seconds": res.seconds,
            "inputs": per_input,
        }


def explain_round(
    model: nn.Module,
    models: RoundModels,
    inputs: InputBatch,
    options: ExplainOptions,
    *,
    label_counts: np.ndarray | None = None,
    source: Mapping[str, Any] | None = None,
) -> Explanation:
    """Attribute the round's global model on every input to the round's clients.

    Parameters
    ----------
    model
        The global model, holding ``models.fused.aggregate``.
    models
        The round (:class:`RoundModels`).
    inputs
        What to explain.
    options
        A per-round method (``paper``, ``update``, ``loo``) and its options.
    label_counts
        ``(K, C)`` the clients' label histograms, if known (adds the paper and
        strict verdicts and the label-share panel of the view).
    source
        Free-form provenance of the models, recorded in the JSON.

    Raises
    ------
    ExplainError
        A method that is not per-round, one that needs the round's starting
        model where it is unknown, a target that needs labels the inputs lack.
    AttributionError
        A method option or the model does not fit the round.

    """
    if _method_class(options.method) is CumulativeMethod:
        raise ExplainError(
            "--method cumulative scores the run's cumulative updates, not one "
            "round's clients: explain_cumulative (tracefl explain --run-dir DIR "
            "--method cumulative)"
        )
    fused = models.fused
    reads = READS_PREVIOUS.get(options.method)
    if options.method == "loo" and fused.num_clients == 1:
        reads = "theta_{t-1} as the round without its only client"
    if reads and not models.previous_known:
        raise ExplainError(
            f"--method {options.method} reads {reads}, so it needs the model the "
            "round started from: pass --previous FILE, or explain a saved round "
            "(--run-dir DIR --round R)"
        )
    method = create_round_method(options.method, **_constructor_options(options))
    _check_label_counts(label_counts, fused.num_clients)
    target = _target_tensor(options.target, inputs)
    result = method.attribute(fused, model, inputs.features, target=target)
    return Explanation(
        result=result,
        inputs=inputs,
        options=options,
        num_examples=fused.num_examples,
        label_counts=label_counts,
        source=source,
    )


def explain_cumulative(
    model: nn.Module,
    store: CumulativeUpdates,
    inputs: InputBatch,
    options: ExplainOptions,
    *,
    label_counts: np.ndarray | None = None,
    source: Mapping[str, Any] | None = None,
) -> Explanation:
    """Attribute any model's prediction to the clients' whole-training updates.

    ``s_k = <d f / d theta at model, U_k>`` with ``U_k = sum_t A_k^t
    Delta_k^t`` from the run's store (see
    :class:`~tracefl.attribution.CumulativeMethod`); ``label_counts`` rows
    follow ``store.client_ids``.

    Raises
    ------
    ExplainError
        ``options.method`` is not ``cumulative``; a target needing labels.
    AttributionError
        The model does not have the store's keys and shapes; a bad option.

    """
    if _method_class(options.method) is not CumulativeMethod:
        raise ExplainError(
            f"--method {options.method} explains one round's clients: "
            "explain_round (tracefl explain --round R)"
        )
    method = CumulativeMethod(store, **_constructor_options(options))
    _check_label_counts(label_counts, len(store.client_ids))
    target = _target_tensor(options.target, inputs)
    result = method.attribute(model, inputs.features, target=target)
    return Explanation(
        result=result,
        inputs=inputs,
        options=options,
        label_counts=label_counts,
        source=source,
    )


def _check_label_counts(label_counts: np.ndarray | None, num_clients: int) -> None:
    if label_counts is not None and label_counts.shape[0] != num_clients:
        raise ExplainError(
            f"label counts have {label_counts.shape[0]} rows for {num_clients} clients"
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


def view_values(result: AttributionResult) -> tuple[np.ndarray, bool]:
    """``(B, K)`` values the per-input view draws, and whether they are scores.

    The probabilities where the method has them; otherwise each input's client
    scores divided by the largest absolute one of that input (scores of
    different inputs differ in scale, the ranking within an input does not).
    """
    if result.probs is not None:
        return result.probs.double().cpu().numpy(), False
    scores = result.client_scores.double().cpu().numpy()
    scale = np.abs(scores).max(axis=1, keepdims=True)
    return scores / np.where(scale > 0, scale, 1.0), True


def write_explanation(
    explanation: Explanation,
    out_dir: Path,
    *,
    plot: bool = True,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``ranking.csv``, ``explanation.json`` and ``explanation.{png,pdf}``.

    The figure is the per-input view: client probabilities (or scaled scores)
    per input with the top client boxed, the inputs' pictures for image data,
    and each client's share of every label when the label counts are known.
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
    result = explanation.result
    preds = result.predicted_labels.cpu().tolist()
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
    values, scaled = view_values(result)
    what = "client score (scaled)" if scaled else "client probability"
    paths += plot_client_probabilities(
        values,
        row_labels,
        list(result.client_ids),
        out_dir / "explanation",
        title=f"{explanation.options.method}: {what} per input",
        scaled_scores=scaled,
        traced=result.traced.cpu().numpy(),
        label_share=share,
        class_labels=names,
        images=inputs.images,
    )
    return paths
