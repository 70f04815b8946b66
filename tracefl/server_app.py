"""TraceFL ServerApp: any Flower strategy, with provenance after every aggregation.

Thin plumbing. From its first line to its last, the run's ``run.json`` tells
the truth: ``running`` (with pid and heartbeat) while it runs, ``completed``
only when every configured round produced a recorded aggregate (and the plots,
if asked for, were drawn), otherwise ``failed`` with the reason and the last
error, or ``interrupted``. The steps: parse the run config (fails before any
training), make sure the output directory holds no other run's results, load
the server's test split, build the initial model and the strategy (the
aggregator, Flower's DP wrapper when DP is on, and :class:`ProvenanceStrategy`
around both), run the rounds, keep Flower's ``Result``, plot, finish.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Result,
    Strategy,
)

from tracefl.aggregators import get_aggregator, sampling_arguments
from tracefl.analysis import Recorder, RoundAnalyzer, build_analyzer
from tracefl.analysis.summary import method_summary
from tracefl.config import (
    ConfigError,
    TraceFLConfig,
    check_federation,
    output_dir_of,
    parse_run_config,
    sampled_train_nodes,
)
from tracefl.data_check import check_data_inputs
from tracefl.dataset import load_server_test
from tracefl.model import build_model
from tracefl.output_dir import prepare_output_dir, result_paths
from tracefl.registry import dataset_num_classes, run_dataset_spec
from tracefl.reply import FEDINFLUENCE
from tracefl.run_info import package_versions
from tracefl.run_status import RunStatusWriter
from tracefl.strategy import FusionCapture, ProvenanceStrategy
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


def federation_size(cfg: TraceFLConfig, grid: Grid, timeout: float = 600.0) -> int:
    """``num-clients``, or the number of SuperNodes once enough are connected.

    With ``num-clients = 0`` the federation is whatever SuperNodes run the app
    (each names its partition and the partition count in its node config).
    """
    if cfg.num_clients:
        return cfg.num_clients
    deadline = time.monotonic() + timeout
    while (connected := len(list(grid.get_node_ids()))) < max(
        cfg.min_available_nodes, 1
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {connected} SuperNodes connected after {timeout:.0f}s; "
                f"min-available-nodes = {cfg.min_available_nodes}"
            )
        log.info("Waiting for SuperNodes: %d connected.", connected)
        time.sleep(1.0)
    return connected


def build_strategy(
    cfg: TraceFLConfig,
    on_round: RoundAnalyzer,
    num_classes: int,
    size: int,
) -> ProvenanceStrategy:
    """The aggregator's strategy, Flower's DP wrapper if enabled, provenance around.

    ``ProvenanceStrategy(DP(FusionCapture(aggregator's strategy)))``: replies are
    validated first, clipped by DP, captured as the aggregator receives them,
    aggregated, noised; the decomposition sees exactly what was fused.
    """
    aggregator = get_aggregator(cfg.fusion)
    capture = FusionCapture(aggregator.build(cfg, sampling_arguments(cfg)), aggregator)
    outer: Strategy = capture
    if cfg.dp_enabled:
        wrapper = (
            DifferentialPrivacyServerSideFixedClipping
            if cfg.dp_clipping == "server"
            else DifferentialPrivacyClientSideFixedClipping
        )
        outer = wrapper(
            capture,
            cfg.noise_multiplier,
            cfg.clipping_norm,
            sampled_train_nodes(cfg, size),
        )
    return ProvenanceStrategy(
        outer,
        capture=capture,
        aggregator=aggregator,
        num_classes=num_classes,
        min_train_nodes=max(cfg.min_train_nodes, 1),
        on_round=on_round,
        expected_partitions=cfg.num_clients or None,
        noise_expected=cfg.dp_enabled and cfg.noise_multiplier > 0,
        required_records=(FEDINFLUENCE,) if cfg.fedinfluence else (),
        excluded_partitions=cfg.excluded_partitions,  # ground truth by retraining
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation and TraceFL's per-round analysis."""
    setup_logging()
    fields = {"versions": package_versions(), "flower_run_id": int(context.run_id)}
    try:
        cfg = parse_run_config(context.run_config)
    except ConfigError as err:
        record_refusal(context.run_config, fields, err)
        raise
    out_dir = cfg.resolved_output_dir()
    prepare_output_dir(out_dir, cfg.overwrite)  # never touches another run's files
    log.info("Writing results to %s", out_dir)
    fields.update(config=cfg.to_run_config(), seed=cfg.seed, output_dir=str(out_dir))
    with RunStatusWriter(out_dir / "run.json", fields) as status:
        recorder, result = _run(cfg, grid, out_dir, status)
        verdict_status, reason = verdict(cfg, recorder)
        if cfg.plots:
            verdict_status, reason = _plot(out_dir, verdict_status, reason)
        facts = {
            "rounds_recorded": len(recorder.round_rows),
            "rounds_by_status": recorder.rounds_by_status,
            "methods": method_summary(recorder, cfg.faulty_mode or cfg.backdoor_mode),
            "flower_result": result_summary(result),
        }
        if verdict_status == "completed":
            status.complete(**facts)
        else:
            status.fail(reason, **facts)
    log.info("Done (%s). Results in %s", verdict_status, out_dir)


def record_refusal(
    run_config: Mapping[str, Any], fields: Mapping[str, Any], err: ConfigError
) -> None:
    """Record a run refused by its config, where that is safe to write.

    Nothing is written when the output directory cannot be told from the raw
    config or already holds another run's results.
    """
    out_dir = output_dir_of(run_config)
    if out_dir is None or result_paths(out_dir):
        return
    with RunStatusWriter(
        out_dir / "run.json", {**fields, "config": dict(run_config)}
    ) as status:
        status.fail(f"invalid run config: {err}", err)


def _run(
    cfg: TraceFLConfig, grid: Grid, out_dir: Path, status: RunStatusWriter
) -> tuple[Recorder, Result]:
    for line in check_data_inputs(cfg):
        log.info("Data: %s", line)
    spec = run_dataset_spec(cfg.dataset, cfg.image_size)
    device = resolve_device(cfg.device)
    test_data = load_server_test(cfg)

    def model_factory() -> torch.nn.Module:
        return build_model(cfg.model, spec, max_seq_len=cfg.max_seq_len)

    torch.manual_seed(cfg.seed)
    initial = ArrayRecord(
        build_model(
            cfg.model, spec, max_seq_len=cfg.max_seq_len, pretrained=cfg.pretrained
        ).state_dict()
    )
    size = federation_size(cfg, grid)
    check_federation(cfg, size)
    status.update(federation={"num_partitions": size})
    num_classes = dataset_num_classes(cfg.dataset)
    recorder = Recorder(out_dir, num_classes, cfg.method_names)
    analyzer = build_analyzer(cfg, test_data, model_factory, device, recorder, size)
    strategy = build_strategy(cfg, analyzer, num_classes, size)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout,
        train_config=ConfigRecord(),  # clients read the run config
    )
    analyzer.finish()
    return recorder, result


def verdict(cfg: TraceFLConfig, recorder: Recorder) -> tuple[str, str]:
    """``completed`` iff every configured round produced a recorded aggregate."""
    rows = recorder.round_rows
    failed = [r for r in rows if r["status"] == "failed"]
    if len(rows) != cfg.num_server_rounds:
        return "failed", (
            f"{len(rows)} of {cfg.num_server_rounds} rounds were recorded"
        )
    if failed:
        detail = "; ".join(f"round {r['round']}: {r['failure']}" for r in failed[:3])
        return "failed", f"{len(failed)} of {len(rows)} rounds failed ({detail})"
    return "completed", ""


def _plot(out_dir: Path, status: str, reason: str) -> tuple[str, str]:
    """Draw the run's figures; a plotting failure fails the run."""
    from tracefl.plotting import plot_run

    try:
        plot_run(out_dir)
    except Exception as err:  # any failure to draw must be visible in the status
        log.error("Plotting failed: %s", err)
        note = f"plotting failed: {type(err).__name__}: {err}"
        return "failed", f"{reason}; {note}" if reason else note
    return status, reason


def result_summary(result: Result) -> dict[str, Any]:
    """Flower's ``Result`` metrics, by round, as plain JSON values."""
    return {
        name: {str(rnd): dict(record) for rnd, record in getattr(result, name).items()}
        for name in (
            "train_metrics_clientapp",
            "evaluate_metrics_clientapp",
            "evaluate_metrics_serverapp",
        )
    }
