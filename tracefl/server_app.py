"""TraceFL ServerApp: FedAvg training with provenance after every aggregation.

Thin plumbing: parse the run config (fails before any training), load the
server's test split, build the initial model, wire :class:`RoundAnalyzer` as the
strategy's post-aggregation hook (inside Flower's DP wrapper when DP is on), run
the rounds, then write ``run.json`` and the plots.
"""

from __future__ import annotations

import logging
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from tracefl.analysis import RoundAnalyzer
from tracefl.config import TraceFLConfig, parse_run_config
from tracefl.dataset import load_server_test
from tracefl.model import build_model
from tracefl.registry import run_dataset_spec
from tracefl.results_io import write_json
from tracefl.strategy import ClientSideDPWithHook, ServerSideDPWithHook, TraceFLFedAvg
from tracefl.train import resolve_device

log = logging.getLogger("tracefl")

app = ServerApp()


def setup_logging() -> None:
    """Send TraceFL's INFO lines to stderr (once per process)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("TraceFL %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a run's numbers."""
    names = (
        "tracefl",
        "flwr",
        "flwr-datasets",
        "torch",
        "torchvision",
        "transformers",
        "datasets",
        "numpy",
    )
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def num_sampled_clients(cfg: TraceFLConfig) -> int:
    """Clients FedAvg samples per round (Flower's rule, capped by the federation)."""
    return min(
        max(int(cfg.num_clients * cfg.fraction_train), cfg.min_train_nodes),
        cfg.num_clients,
    )


def build_strategy(cfg: TraceFLConfig, hook: RoundAnalyzer) -> Strategy:
    """FedAvg with the hook, wrapped in Flower's fixed-clipping DP when enabled."""
    fedavg_args: dict[str, Any] = {
        "fraction_train": cfg.fraction_train,
        "fraction_evaluate": cfg.fraction_evaluate,
        "min_train_nodes": cfg.min_train_nodes,
        "min_evaluate_nodes": cfg.min_evaluate_nodes,
        "min_available_nodes": cfg.min_available_nodes,
    }
    if not cfg.dp_enabled:
        return TraceFLFedAvg(on_round_end=hook, **fedavg_args)
    wrapper = (
        ServerSideDPWithHook if cfg.dp_clipping == "server" else ClientSideDPWithHook
    )
    return wrapper(
        TraceFLFedAvg(**fedavg_args),
        hook,
        noise_multiplier=cfg.noise_multiplier,
        clipping_norm=cfg.clipping_norm,
        num_sampled_clients=num_sampled_clients(cfg),
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation and TraceFL's per-round analysis."""
    setup_logging()
    cfg = parse_run_config(context.run_config)
    out_dir = cfg.resolved_output_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("Writing results to %s", out_dir)
    started = datetime.now(UTC).isoformat()
    run_info: dict[str, Any] = {
        "config": cfg.to_run_config(),
        "seed": cfg.seed,
        "versions": package_versions(),
        "started": started,
        "status": "running",
        "output_dir": str(out_dir),
    }
    write_json(out_dir / "run.json", run_info)

    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    device = resolve_device(cfg.device)
    test_data = load_server_test(cfg)

    def model_factory() -> torch.nn.Module:
        return build_model(cfg.model, spec, max_seq_len=cfg.max_seq_len)

    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(model_factory().state_dict())
    analyzer = RoundAnalyzer(cfg, test_data, model_factory, device)
    strategy = build_strategy(cfg, analyzer)
    try:
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord(),  # clients read the run config
        )
    except BaseException as err:
        run_info.update(
            status="failed", error=repr(err), finished=datetime.now(UTC).isoformat()
        )
        write_json(out_dir / "run.json", run_info)
        raise
    run_info.update(
        status="completed",
        finished=datetime.now(UTC).isoformat(),
        rounds_recorded=len(analyzer.round_rows),
    )
    write_json(out_dir / "run.json", run_info)
    if cfg.plots:
        from tracefl.plotting import plot_run

        plot_run(out_dir)
    log.info("Done. Results in %s", out_dir)
