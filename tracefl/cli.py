r"""The ``tracefl`` command: explain saved models, list them, rebuild reports.

    tracefl explain --run-dir results/x --round 3 --split test --limit 16
    tracefl explain --run-dir results/x --round 3 --method loo --split test
    tracefl explain --run-dir results/x --method cumulative --images digits/
    tracefl explain --model cnn --dataset mnist --global g.safetensors \\
        --clients c0.safetensors c1.safetensors --client-weights 412,380 \\
        --images my_digits/
    tracefl models results/x
    tracefl report results/fig3 results/default

Every error names the option or file at fault and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tracefl.attribution import METHODS, AttributionError, method_spec
from tracefl.attribution.registry import STORE_STATE
from tracefl.config import ConfigError, TraceFLConfig, parse_run_config
from tracefl.explain import (
    ExplainError,
    ExplainOptions,
    Explanation,
    InputBatch,
    RoundModels,
    architecture_from_config,
    build_architecture,
    dataset_spec_of,
    explain_cumulative,
    explain_round,
    import_factory,
    load_client_files,
    load_cumulative,
    load_global_model,
    load_image_folder,
    load_previous_file,
    load_split,
    load_tensor_file,
    load_text_file,
    method_option_names,
    parse_client_weights,
    write_explanation,
)
from tracefl.model_store import ModelStore, ModelStoreError, load_state_file
from tracefl.provenance import ProvenanceInputError
from tracefl.provenance.layers import LAYER_SETS
from tracefl.provenance.objective import OBJECTIVES
from tracefl.sources.raw import DataUnavailableError
from tracefl.text import ModelUnavailableError

#: Errors reported as ``tracefl <command>: error: ...`` (exit status 2).
USER_ERRORS = (
    ExplainError,
    ModelStoreError,
    ProvenanceInputError,
    AttributionError,
    ConfigError,
    FileNotFoundError,
    DataUnavailableError,
    ModelUnavailableError,
)

#: Method options set from the command line: flag -> (argparse dest, option).
METHOD_FLAGS = {
    "--pk/--no-pk": ("pk", "scale_by_data_share"),
    "--beta/--no-beta": ("beta", "enable_beta"),
    "--beta-decay": ("beta_decay", "decay"),
    "--layers": ("layers", "layers"),
    "--objective": ("objective", "objective"),
    "--client-chunk-size": ("client_chunk_size", "client_chunk_size"),
}


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The ``tracefl`` argument parser (one sub-command per verb)."""
    parser = argparse.ArgumentParser(
        prog="tracefl",
        description="TraceFL: which client is responsible for a prediction of the "
        "global model?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_explain(sub)
    models = sub.add_parser(
        "models", help="list the models a run saved (models/manifest.json)"
    )
    models.add_argument("run_dir", type=Path)
    rep = sub.add_parser(
        "report", help="rebuild figures/tables of run or experiment directories"
    )
    rep.add_argument("paths", nargs="+", type=Path)
    return parser


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="rank the clients behind each prediction of a global model",
        description="Attribute a global model's prediction on each input to the "
        "clients: one round's (paper, update, loo) or the whole training's "
        "(cumulative). Writes ranking.csv (one row per input and client or "
        "pseudo-client), explanation.json and explanation.png/.pdf (the "
        "per-input view).",
    )
    arch = p.add_argument_group(
        "architecture (one of: --run-dir, --model + --dataset, --architecture)"
    )
    arch.add_argument(
        "--run-dir",
        type=Path,
        help="a run's output directory: its run.json gives the architecture and "
        "defaults; with --round its saved models are read",
    )
    arch.add_argument("--model", help="model name (cnn, resnet18, minilm, ...)")
    arch.add_argument("--dataset", help="dataset name (mnist, cifar10, ...)")
    arch.add_argument("--image-size", type=int, default=None)
    arch.add_argument("--max-seq-len", type=int, default=None)
    arch.add_argument(
        "--architecture",
        metavar="MODULE:CALLABLE",
        help="your own architecture: a zero-argument function returning the model",
    )
    models = p.add_argument_group(
        "models (--round, or --global + --clients; cumulative: the final model, "
        "--round or --global)"
    )
    models.add_argument(
        "--round",
        help="saved round of --run-dir to explain ('last' for the latest)",
    )
    models.add_argument(
        "--global",
        dest="global_model",
        type=Path,
        help="global model file (.safetensors, or .pt/.pth read with "
        "weights_only=True); with --round it replaces the round's aggregate",
    )
    models.add_argument("--clients", nargs="+", type=Path, default=None)
    models.add_argument(
        "--client-ids", help="comma-separated names (default: the file names)"
    )
    models.add_argument(
        "--client-weights",
        help="n_k per client: '412,380,...' or a .json file (list, or {id: n_k})",
    )
    models.add_argument(
        "--previous",
        type=Path,
        help="with --clients: the global model the clients started from "
        "(theta_{t-1}; needed by --method update)",
    )
    inputs = p.add_argument_group("inputs (one of)")
    inputs.add_argument(
        "--images", type=Path, help="folder of images (or of <label>/ sub-folders)"
    )
    inputs.add_argument(
        "--resize",
        action="store_true",
        help="resize images to the dataset's size instead of refusing",
    )
    inputs.add_argument(
        "--tensors",
        type=Path,
        help="model-ready inputs: .safetensors or .pt with 'inputs' (or "
        "input_ids + attention_mask) and optional 'labels'",
    )
    inputs.add_argument(
        "--texts", type=Path, help="text file, one input per line ('<label>\\t' ok)"
    )
    inputs.add_argument(
        "--split", help="the run's data: 'test' (server split) or 'client-<i>'"
    )
    inputs.add_argument("--indices", help="rows of --split, e.g. '0,5,9'")
    inputs.add_argument(
        "--limit", type=int, default=32, help="first N rows of --split (default 32)"
    )
    engine = p.add_argument_group(
        "method and engine options",
        "Per-round methods (paper, update, loo) explain one round's clients; "
        "cumulative explains any model (default: the final one) against the "
        "run's cumulative updates U_k (--run-dir with cumulative/). The "
        "cross-round methods accumulate during training only: their answers for "
        "the run's query inputs are in its scores.csv. Options a method does "
        "not take are refused.",
    )
    engine.add_argument(
        "--method",
        choices=list(METHODS),
        default="paper",
        help="attribution method (default: paper)",
    )
    engine.add_argument(
        "--target",
        default="predicted",
        help="class to explain: 'predicted' (default), 'true' or a class index",
    )
    engine.add_argument(
        "--beta-decay", type=float, default=None, help="beta_l = decay^(L-1-l)"
    )
    engine.add_argument(
        "--beta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="layer importance beta (paper: default on, or the run's "
        "enable-beta; update/cumulative: default off)",
    )
    engine.add_argument(
        "--pk",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="paper: scale by the data share p_k (default: on, or the run's "
        "client-weights-normalization)",
    )
    engine.add_argument(
        "--layers",
        choices=sorted(LAYER_SETS),
        default=None,
        help="traced layer families: 'paper' (the original artifact's) or 'all' "
        "(paper: default the run's provenance-layers; update/cumulative: all)",
    )
    engine.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=None,
        help="update/loo/cumulative: what is attributed (default log_softmax)",
    )
    engine.add_argument("--device", default=None, help="cpu, cuda, cuda:1 or auto")
    engine.add_argument("--chunk-size", type=int, default=None, help="inputs/chunk")
    engine.add_argument(
        "--client-chunk-size",
        type=int,
        default=None,
        help="cumulative: most clients per engine call (bounds memory)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        type=Path,
        help="output folder (default: <run-dir>/explain/<round-r|final|global>-"
        "<method>, else ./tracefl-explain)",
    )
    out.add_argument("--no-plot", action="store_true", help="CSV and JSON only")
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing")


# ----------------------------------------------------------------- explain


def _read_run_config(run_dir: Path) -> TraceFLConfig | None:
    """The run's config from ``run.json`` (``None`` if there is none).

    ``num-clients = 0`` (the federation decides) is replaced by the number of
    partitions the run recorded, so ``--split client-<i>`` reads the same data.
    """
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        stored = dict(info["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ExplainError(f"--run-dir: cannot read {path}: {err}") from err
    stored.pop("output-dir", None)
    partitions = (info.get("federation") or {}).get("num_partitions")
    if not stored.get("num-clients") and partitions:
        stored["num-clients"] = int(partitions)
    return parse_run_config(stored)


def _architecture(
    args: argparse.Namespace, cfg: TraceFLConfig | None, store: ModelStore | None
) -> tuple[Callable[[], nn.Module], dict[str, Any] | None]:
    """The model factory and, for registry models, the architecture mapping."""
    if args.architecture:
        if args.model or args.dataset:
            raise ExplainError("--architecture: do not combine with --model/--dataset")
        return import_factory(args.architecture), None
    if args.model or args.dataset:
        if not (args.model and args.dataset):
            raise ExplainError("--model and --dataset go together")
        arch: dict[str, Any] = {"model": args.model, "dataset": args.dataset}
    elif cfg is not None:
        arch = architecture_from_config(cfg.to_run_config())
    elif store is not None and store.architecture:
        arch = store.architecture
    else:
        raise ExplainError(
            "no architecture: pass --run-dir (with run.json), --model and "
            "--dataset, or --architecture MODULE:CALLABLE"
        )
    if args.image_size is not None:
        arch["image-size"] = args.image_size
    if args.max_seq_len is not None:
        arch["max-seq-len"] = args.max_seq_len
    # Validate names through the run-config checks (clear key/value errors).
    parse_run_config(
        {
            "model": arch["model"],
            "dataset": arch["dataset"],
            **{k: arch[k] for k in ("image-size", "max-seq-len") if k in arch},
        }
    )
    return (lambda: build_architecture(arch)), arch


def _options(
    args: argparse.Namespace, cfg: TraceFLConfig | None, run_models: bool
) -> ExplainOptions:
    """Method and engine options from the flags, the run's settings as defaults.

    The paper method takes its defaults from the run (``client-weights-
    normalization``, ``enable-beta``, ``beta-decay``, ``provenance-layers``);
    the others keep their own unless a flag sets them. The ``server``
    pseudo-client is scored as the app scores it for the run's own models
    (not for FedAvg/FedProx without DP) and always for other models.
    """
    allowed = method_option_names(args.method)  # refuses cross-round methods
    base = cfg or TraceFLConfig()
    chosen: dict[str, Any] = {}
    for flag, (dest, option) in METHOD_FLAGS.items():
        value = getattr(args, dest)
        if value is None:
            continue
        if option not in allowed:
            raise ExplainError(
                f"{flag}: not an option of method {args.method!r} (it takes "
                f"{', '.join(allowed)})"
            )
        chosen[option] = value
    if args.method == "paper":
        chosen.setdefault("scale_by_data_share", base.client_weights_normalization)
        chosen.setdefault("enable_beta", base.enable_beta)
        chosen.setdefault("decay", base.beta_decay)
        chosen.setdefault("layers", base.provenance_layers)
    if "include_server" in allowed:
        # As the app does for a run's own models (TraceFLConfig.residual_expected).
        plain_average = cfg is not None and not cfg.residual_expected
        chosen["include_server"] = not (run_models and plain_average)
    target: str | int = args.target
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    device = args.device or (base.device if cfg is not None else "cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExplainError(f"--device {device}: CUDA is not available here")
    return ExplainOptions(
        method=args.method,
        target=target,
        device=device,
        chunk_size=args.chunk_size or base.provenance_chunk_size,
        method_options=chosen,
    )


def _int_list(text: str, option: str) -> list[int]:
    try:
        return [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError as err:
        raise ExplainError(f"{option} {text!r}: expected e.g. '0,5,9'") from err


def _inputs(
    args: argparse.Namespace, cfg: TraceFLConfig | None, arch: dict[str, Any] | None
) -> InputBatch:
    given = [
        name
        for name in ("images", "tensors", "texts", "split")
        if getattr(args, name) is not None
    ]
    if len(given) != 1:
        raise ExplainError(
            "give exactly one input source: --images DIR, --tensors FILE, "
            f"--texts FILE or --split test|client-<i> (got {given or 'none'})"
        )
    if args.tensors is not None:
        return load_tensor_file(args.tensors)
    if arch is None:
        raise ExplainError(
            f"--{given[0]} needs a TraceFL architecture (--model/--dataset or "
            "--run-dir) to preprocess; with --architecture pass --tensors"
        )
    if args.images is not None:
        spec = dataset_spec_of(arch)
        if spec.kind != "image":
            raise ExplainError(f"--images: dataset '{spec.name}' is a text dataset")
        return load_image_folder(args.images, spec, args.resize)
    if args.texts is not None:
        return load_text_file(
            args.texts, str(arch["model"]), int(arch.get("max-seq-len", 128))
        )
    if cfg is None:
        raise ExplainError("--split needs --run-dir (the run's data settings)")
    indices = _int_list(args.indices, "--indices") if args.indices else None
    return load_split(cfg, args.split, indices, args.limit)


def _weights_for(text: str | None, ids: Sequence[str] | None) -> list[float] | None:
    if text is None:
        return None
    weights = parse_client_weights(text)
    if isinstance(weights, dict):
        if ids is None:
            raise ExplainError(
                "--client-weights as {id: n_k} needs --client-ids (or use a list)"
            )
        missing = [cid for cid in ids if cid not in weights]
        if missing:
            raise ExplainError(f"--client-weights has no weight for '{missing[0]}'")
        return [weights[cid] for cid in ids]
    return weights


def _fused_clients(run_dir: Path | None) -> pd.DataFrame | None:
    """``clients.csv`` rows of the fused clients that carry a label histogram."""
    if run_dir is None or not (run_dir / "clients.csv").is_file():
        return None
    frame = pd.read_csv(run_dir / "clients.csv")
    if "status" in frame:
        frame = frame[frame["status"] == "fused"]
    label_cols = [c for c in frame.columns if c.startswith("label_")]
    if not label_cols or "client" not in frame:
        return None
    frame = frame.dropna(subset=["client", *label_cols])
    return frame.assign(client_id=[f"client-{int(c)}" for c in frame["client"]])


def _label_counts(
    run_dir: Path | None, server_round: int | None, client_ids: Sequence[str]
) -> np.ndarray | None:
    """The clients' label histograms (``clients.csv``), rows in ``client_ids`` order.

    Those they reported in ``server_round``; with ``None``, the latest each
    reported (what the app scores its cross-round methods against).
    """
    frame = _fused_clients(run_dir)
    if frame is None:
        return None
    if server_round is not None:
        frame = frame[frame["round"] == server_round]
    label_cols = [c for c in frame.columns if c.startswith("label_")]
    latest = frame.sort_values("round").groupby("client_id").last()
    if any(cid not in latest.index for cid in client_ids):
        return None
    return latest.loc[list(client_ids), label_cols].to_numpy(dtype=np.int64)


def _resolve_round(text: str, store: ModelStore) -> int:
    rounds = store.rounds()
    if text == "last":
        if not rounds:
            raise ModelStoreError(f"no round saved in {store.root}")
        return rounds[-1]
    if not text.isdigit():
        raise ExplainError(f"--round {text!r}: expected a round number or 'last'")
    return int(text)


def run_explain(args: argparse.Namespace) -> int:
    """``tracefl explain``."""
    run_dir = args.run_dir
    if run_dir is not None and not run_dir.is_dir():
        raise ExplainError(f"--run-dir {run_dir}: not a directory")
    cfg = _read_run_config(run_dir) if run_dir is not None else None
    method_option_names(args.method)  # refuses cross-round methods first
    cumulative = method_spec(args.method).state == STORE_STATE
    if args.round is not None and run_dir is None:
        raise ExplainError("--round needs --run-dir (the run's saved models)")
    if cumulative and run_dir is None:
        raise ExplainError(
            "--method cumulative needs --run-dir (the run's cumulative/ store)"
        )
    store = None
    if args.round is not None:
        store = ModelStore.open(run_dir)
    elif cumulative and args.global_model is None:
        try:
            store = ModelStore.open(run_dir)
        except ModelStoreError as err:
            raise ExplainError(_NO_FINAL_MODEL.format(where=run_dir)) from err
    factory, arch = _architecture(args, cfg, store)
    run_models = cumulative or (store is not None and args.global_model is None)
    options = _options(args, cfg, run_models)
    explain_with = _explain_cumulative if cumulative else _explain_round
    explanation, name = explain_with(args, cfg, arch, store, factory, options)
    out = args.out or (
        run_dir / "explain" / f"{name}-{options.method}"
        if run_dir is not None
        else Path("tracefl-explain")
    )
    class_names = list(dataset_spec_of(arch).label_names) if arch else None
    paths = write_explanation(
        explanation, out, plot=not args.no_plot, class_names=class_names
    )
    if not args.quiet:
        print(_summary(explanation))
        for path in paths:
            print(f"wrote {path}")
    return 0


_NO_FINAL_MODEL = (
    "--method cumulative explains the run's final model by default, but {where} "
    "has none (run with keep-final-model=true); pass --global FILE or --round R "
    "to explain another model"
)


def _explain_round(
    args: argparse.Namespace,
    cfg: TraceFLConfig | None,
    arch: dict[str, Any] | None,
    store: ModelStore | None,
    factory: Callable[[], nn.Module],
    options: ExplainOptions,
) -> tuple[Explanation, str]:
    """A per-round method on a saved round or on loose files."""
    server_round: int | None = None
    if store is not None:
        given = [
            flag
            for flag, value in (
                ("--clients", args.clients),
                ("--client-ids", args.client_ids),
                ("--client-weights", args.client_weights),
                ("--previous", args.previous),
            )
            if value
        ]
        if given:
            raise ExplainError(
                "--round reads the round's clients, weights and starting model; "
                f"do not pass {'/'.join(given)} with it"
            )
        server_round = _resolve_round(str(args.round), store)
        models = RoundModels.from_store(store, server_round)
        source: dict[str, Any] = {"run_dir": str(args.run_dir), "round": server_round}
        if args.global_model is None:
            model = load_global_model(
                factory,
                models.fused.aggregate,
                f"round {server_round}'s global model",
            )
        else:
            model = load_global_model(
                factory,
                load_state_file(args.global_model),
                f"global model {args.global_model}",
            )
            models = models.with_aggregate(model)
            source["global"] = str(args.global_model)
        name = f"round-{server_round}"
    elif args.global_model is None or not args.clients:
        raise ExplainError(
            "give the models: --run-dir DIR --round R, or --global FILE and "
            "--clients FILE [FILE ...]"
        )
    else:
        model = load_global_model(
            factory,
            load_state_file(args.global_model),
            f"global model {args.global_model}",
        )
        ids = args.client_ids.split(",") if args.client_ids else None
        unweighted = args.method == "paper" and not options.method_options.get(
            "scale_by_data_share", True
        )
        clients = load_client_files(
            model,
            args.clients,
            ids,
            _weights_for(args.client_weights, ids),
            weights_needed=not unweighted,
        )
        previous = load_previous_file(model, args.previous) if args.previous else None
        models = RoundModels.from_files(model, clients, previous)
        source = {
            "global": str(args.global_model),
            "clients": [str(p) for p in args.clients],
        }
        if args.previous:
            source["previous"] = str(args.previous)
        name = "global"
    inputs = _inputs(args, cfg, arch)
    explanation = explain_round(
        model,
        models,
        inputs,
        options,
        label_counts=_label_counts(
            args.run_dir if server_round is not None else None,
            server_round,
            models.fused.client_ids,
        ),
        source={**source, "architecture": arch or args.architecture},
    )
    return explanation, name


def _explain_cumulative(
    args: argparse.Namespace,
    cfg: TraceFLConfig | None,
    arch: dict[str, Any] | None,
    store: ModelStore | None,
    factory: Callable[[], nn.Module],
    options: ExplainOptions,
) -> tuple[Explanation, str]:
    """``cumulative``: any model (default the final one) against the run's U_k."""
    given = [
        flag
        for flag, value in (
            ("--clients", args.clients),
            ("--client-ids", args.client_ids),
            ("--client-weights", args.client_weights),
            ("--previous", args.previous),
        )
        if value
    ]
    if given:
        raise ExplainError(
            "--method cumulative scores every client of the run from its "
            f"cumulative store; do not pass {'/'.join(given)}"
        )
    updates = load_cumulative(args.run_dir)
    source: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "cumulative_rounds": list(updates.rounds),
    }
    if args.global_model is not None:
        state = load_state_file(args.global_model)
        owner, name = f"global model {args.global_model}", "global"
        source["global"] = str(args.global_model)
    elif args.round is not None:
        assert store is not None
        server_round = _resolve_round(str(args.round), store)
        state = store.load_round(server_round).aggregate
        owner, name = f"round {server_round}'s global model", f"round-{server_round}"
        source["round"] = server_round
    else:
        assert store is not None
        if not store.manifest.get("final"):
            raise ExplainError(_NO_FINAL_MODEL.format(where=store.root))
        state = store.load_final()
        owner, name = "the final global model", "final"
        source["model"] = "final"
    model = load_global_model(factory, state, owner)
    inputs = _inputs(args, cfg, arch)
    explanation = explain_cumulative(
        model,
        updates,
        inputs,
        options,
        label_counts=_label_counts(args.run_dir, None, updates.client_ids),
        source={**source, "architecture": arch or args.architecture},
    )
    return explanation, name


def _summary(explanation: Explanation, top: int = 3) -> str:
    """A screen table: each input's top clients with their probability or score."""
    lines: list[str] = []
    for row in explanation.ranking_rows():
        if row["rank"] == 1:
            label = f" y={row['true_label']}" if row["true_label"] != "" else ""
            lines.append(f"{row['name']}{label} pred={row['predicted_label']}:")
        if row["rank"] != "" and row["rank"] <= top:
            value = (
                f"{row['probability']:.3f}"
                if row["probability"] != ""
                else f"score {row['score']:+.3g}"
            )
            lines[-1] += f"  {row['client_id']} {value}"
    return "\n".join(lines)


# ----------------------------------------------------------- other verbs


def run_models(args: argparse.Namespace) -> int:
    """``tracefl models``: what a run saved."""
    store = ModelStore.open(args.run_dir)
    manifest = store.manifest
    arch = manifest.get("architecture") or {}
    print(f"store: {store.root}")
    if arch:
        print("architecture: " + ", ".join(f"{k}={v}" for k, v in arch.items()))
    final = manifest.get("final")
    print(
        f"final model: {final['path']} (round {final.get('round')})"
        if final
        else "final model: not kept"
    )
    for r in store.rounds():
        entry = manifest["rounds"][str(r)]
        size = sum(int(f["bytes"]) for f in entry["files"].values())
        clients = ", ".join(
            f"{cid} (n={n})"
            for cid, n in zip(entry["client_ids"], entry["num_examples"], strict=True)
        )
        print(f"round {r}: {entry['aggregator']}, {size / 2**20:.1f} MB, {clients}")
    for r, why in sorted(manifest.get("skipped_rounds", {}).items()):
        print(f"round {r}: not saved ({why})")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """``tracefl report``: rebuild figures and summaries from the CSVs."""
    from tracefl.report import build_report

    for path in args.paths:
        for written in build_report(path):
            print(f"wrote {written}")
    return 0


COMMANDS = {"explain": run_explain, "models": run_models, "report": run_report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tracefl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"tracefl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
