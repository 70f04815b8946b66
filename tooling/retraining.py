"""Ground truth by retraining: rerun the whole federation without each client.

A study is ``conf/<name>.truth.toml``: the shared run config (``run-config``, a
flat Flower run config), ``[scenarios.<s>]`` (run-config overrides of one
federation, e.g. a label-flipping client) and ``[variants.<v>]`` (other
Fed-Influence settings on the same training: only ``fedinfluence-*`` keys, and
``scenarios = [...]`` where they run). Per scenario, every run goes through
Flower's simulation engine (:mod:`tooling.flower_local`), one after the other,
into ``results/<name>/runs/<s>/``:

``reference``
    every method and Fed-Influence, FIP estimates and the models of every
    round kept;
``fip-<v>``
    the same training with variant ``v``'s Fed-Influence settings (estimates
    only; its final model must equal the reference's);
``without-<k>``
    ``exclude-partitions = k``: the same seeds and sampling, client ``k``'s
    replies dropped before aggregation in every round (models of every round
    kept).

Then, from the kept models (``results/<name>/ground_truth/<s>/``, cached: redone
only when a model or estimate file changed):

``effects.csv``
    per round, traced input of the reference and client ``k``: the true
    change of the predicted class's logit (``d_logit``), of its
    cross-entropy (``d_logprob`` = ``-(log p_pred(w^{-k}) - log p_pred(w))``:
    the responsibility of ``k`` for the prediction) and of the cross-entropy
    with the true label (``d_loss_true``), and the class ``w_t^{-k}`` predicts;
``test_effects.csv``
    per round and client: the change of the mean test loss and accuracy on the
    server's whole test split;
``estimates_effects.csv``, ``estimates_test.csv``
    the same, estimated from each Fed-Influence run's FIP (``w_t + eps``) and
    by the round's exact leave-one-out of the aggregation (``round-loo``);
``estimates_fip.csv``
    per estimator, round, client and parameter tensor: norms of the estimated
    and the true FIP ``w_t^{-k} - w_t`` and of their difference, their dot
    product, whether the block is tracked and whether LWET truncated it;
``manifest.json``
    the runs (configs, status, wall time), the digest of every input file, and
    two checks: round 1 of a retraining equals the reference's round-1
    leave-one-out, and every variant's final model equals the reference's.

    python -m tooling.retraining fedinfluence            # run, then tables
    python -m tooling.retraining fedinfluence --dry-run  # list the runs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from tooling.experiments import (
    CONF_DIR,
    GridError,
    Plan,
    Run,
    plan_runs,
    read_run_config_file,
    read_toml,
    refusal_message,
    run_one,
)
from tooling.flower_local import REPO_ROOT, LocalSuperLink, interrupt_as_exit
from tracefl.attribution import FusedRound, StateDict
from tracefl.attribution.leave_one_out import leave_one_out_state
from tracefl.config import ConfigError, TraceFLConfig, parse_run_config
from tracefl.dataset import LabeledTensors, load_server_test
from tracefl.fedinfluence import PredictionEffect, counterfactual_effects
from tracefl.fedinfluence_estimates import ESTIMATES_DIR, load_estimates
from tracefl.model import build_model
from tracefl.model_store import ModelStore
from tracefl.registry import run_dataset_spec
from tracefl.reply import client_id
from tracefl.results_io import write_csv, write_json

#: Version of the ground-truth tables (bump when their computation changes).
TABLES_VERSION = 1
REFERENCE = "reference"
ROUND_LOO = "round-loo"
#: What each kind of run changes on top of the scenario's config.
REFERENCE_KEYS = {
    "fedinfluence": True,
    "fedinfluence-save-estimates": True,
    "keep-models-rounds": "all",
    "keep-final-model": True,
}
QUIET_KEYS = {"provenance": False, "feddebug": False, "methods": "loo"}
VARIANT_KEYS = {
    **QUIET_KEYS,
    "fedinfluence": True,
    "fedinfluence-save-estimates": True,
    "keep-models-rounds": "",
    "keep-final-model": True,
}
WITHOUT_KEYS = {
    **QUIET_KEYS,
    "fedinfluence": False,
    "fedinfluence-save-estimates": False,
    "keep-models-rounds": "all",
    "keep-final-model": True,
}


class StudyError(ValueError):
    """A malformed study config or run directory; the message names it."""


# ------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Study:
    """A ground-truth study as read from ``conf/<name>.truth.toml``."""

    name: str
    path: Path
    base: dict[str, Any]
    scenarios: dict[str, dict[str, Any]]
    variants: dict[str, dict[str, Any]]
    variant_scenarios: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def runs(self, scenario: str) -> list[Run]:
        """The scenario's runs: reference, variants, one without each client."""
        config = {**self.base, **self.scenarios[scenario]}
        size = parse_run_config(config).num_clients
        runs = [Run(REFERENCE, {**config, **REFERENCE_KEYS})]
        for name, keys in self.variants.items():
            if scenario in self.variant_scenarios[name]:
                runs.append(Run(f"fip-{name}", {**config, **VARIANT_KEYS, **keys}))
        for k in range(size):
            runs.append(
                Run(
                    f"without-{k}",
                    {**config, **WITHOUT_KEYS, "exclude-partitions": str(k)},
                )
            )
        return runs


def load_study(name: str, conf_dir: Path = CONF_DIR) -> Study:
    """Read and check ``conf_dir/<name>.truth.toml`` and its run config."""
    path = conf_dir / f"{name}.truth.toml"
    if not path.is_file():
        raise StudyError(f"no study '{name}' ({path} missing)")
    data = read_toml(path)
    unknown = set(data) - {"run-config", "scenarios", "variants"}
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {sorted(unknown)}")
    if "run-config" not in data:
        raise StudyError(f"{path}: needs run-config = '<file>.toml'")
    base = read_run_config_file(path.parent / data["run-config"])
    scenarios = data.get("scenarios") or {}
    if not scenarios:
        raise StudyError(f"{path}: needs at least one [scenarios.<name>] table")
    variants: dict[str, dict[str, Any]] = {}
    where: dict[str, tuple[str, ...]] = {}
    for name_, table in (data.get("variants") or {}).items():
        table = dict(table)
        where[name_] = tuple(table.pop("scenarios", list(scenarios)))
        bad = [k for k in table if not k.startswith("fedinfluence-")]
        if bad:
            raise StudyError(
                f"{path}: [variants.{name_}] sets {bad}; a variant may only change "
                "fedinfluence-* keys (its training must be the reference's)"
            )
        missing = [s for s in where[name_] if s not in scenarios]
        if missing:
            raise StudyError(f"{path}: [variants.{name_}] names no scenario {missing}")
        variants[name_] = table
    study = Study(name, path, base, dict(scenarios), variants, where)
    for scenario in scenarios:
        config = {**base, **scenarios[scenario]}
        try:
            cfg = parse_run_config(config)
        except ConfigError as err:
            raise StudyError(f"{path}: [scenarios.{scenario}]: {err}") from err
        if cfg.num_clients < 2 or cfg.fraction_train < 1.0:
            raise StudyError(
                f"{path}: [scenarios.{scenario}] needs num-clients >= 2 and "
                "fraction-train = 1 (every client in every round): leave-one-out "
                "retraining is defined per client of a fixed federation"
            )
        for run in study.runs(scenario):
            parse_run_config(run.overrides)
    return study


# ------------------------------------------------------------------- the runs


def scenario_dirs(results: Path, study: Study, scenario: str) -> tuple[Path, Path]:
    """``(runs/<s>, ground_truth/<s>)`` under ``results/<study>``."""
    root = results / study.name
    return root / "runs" / scenario, root / "ground_truth" / scenario


def plan_study(
    study: Study, results: Path, *, force: bool, rerun_changed: bool
) -> dict[str, list[Plan]]:
    """Per scenario, what to do with each run (completed, unchanged: skip)."""
    return {
        s: plan_runs(
            study.runs(s),
            scenario_dirs(results, study, s)[0],
            seed=None,
            data_dir="",
            force=force,
            rerun_changed=rerun_changed,
        )
        for s in study.scenarios
    }


def run_plans(plans: Mapping[str, Sequence[Plan]], results: Path, study: Study) -> None:
    """Run every planned run, one after the other, on one private SuperLink."""
    todo = [(s, p) for s, ps in plans.items() for p in ps if p.action == "run"]
    if not todo:
        return
    timings_path = results / study.name / "runs" / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    with interrupt_as_exit(), LocalSuperLink(simulation=True) as link:
        for n, (scenario, plan) in enumerate(todo, 1):
            runs_dir = scenario_dirs(results, study, scenario)[0]
            runs_dir.mkdir(parents=True, exist_ok=True)
            prefix = f"[{scenario}/{plan.run.name} {n}/{len(todo)}]"
            print(f"{prefix} running; log {runs_dir / plan.run.name}.log", flush=True)
            start = time.perf_counter()
            rc = run_one(link, plan, runs_dir, prefix, show=False)
            took = time.perf_counter() - start
            print(f"{prefix} exit {rc} after {took:.0f}s", flush=True)
            if rc != 0:
                raise SystemExit(f"run {scenario}/{plan.run.name} failed (rc {rc})")
            timings[f"{scenario}/{plan.run.name}"] = round(took, 1)
            write_json(timings_path, timings)


# ------------------------------------------------------------ ground truth


@dataclass
class RunModels:
    """The round models a run kept, and how to rebuild its model."""

    run_dir: Path
    cfg: TraceFLConfig
    store: ModelStore

    @classmethod
    def open(cls, run_dir: Path) -> RunModels:
        """Read ``run.json`` (must say completed) and the model store."""
        info = _read_run_json(run_dir)
        if info.get("status") != "completed":
            raise StudyError(f"{run_dir}: run status {info.get('status')!r}")
        return cls(run_dir, parse_run_config(info["config"]), ModelStore.open(run_dir))

    def model(self) -> nn.Module:
        """A fresh model of the run's architecture (weights are replaced)."""
        spec = run_dataset_spec(self.cfg.dataset, self.cfg.image_size)
        return build_model(self.cfg.model, spec, max_seq_len=self.cfg.max_seq_len)

    def round(self, server_round: int) -> FusedRound:
        """Round ``server_round`` as fused."""
        return self.store.load_round(server_round)


def _read_run_json(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.is_file():
        raise StudyError(f"{run_dir}: no run.json (run the study first)")
    return json.loads(path.read_text())


def effect_rows(
    effect: PredictionEffect,
    true: PredictionEffect,
    keys: Mapping[str, Sequence[Any]],
) -> list[dict[str, Any]]:
    """Long rows of per-input effects: one per input and client.

    ``effect`` was evaluated with the predicted labels (its ``loss`` is the
    change of ``-log p_pred``), ``true`` with the true labels; ``keys`` holds
    per-input columns (``round``, ``input_index``, ...).
    """
    rows = []
    for b in range(len(effect.predicted_labels)):
        for k, cid in enumerate(effect.client_ids):
            rows.append(
                {
                    **{name: values[b] for name, values in keys.items()},
                    "client": cid,
                    "d_logit": float(effect.logit[b, k]),
                    "d_logprob": float(effect.loss[b, k]),
                    "d_loss_true": float(true.loss[b, k]),
                    "cf_label": int(effect.counterfactual_labels[b, k]),
                }
            )
    return rows


def test_rows(
    server_round: int, effect: PredictionEffect, labels: Tensor
) -> list[dict[str, Any]]:
    """Per client: change of the mean test loss and accuracy (whole test split)."""
    accuracy = float((effect.predicted_labels == labels).double().mean())
    changed = (effect.counterfactual_labels == labels[:, None]).double().mean(0)
    return [
        {
            "round": server_round,
            "client": cid,
            "d_test_loss": float(effect.test_loss[k]),
            "d_test_accuracy": float(changed[k]) - accuracy,
            "reference_test_loss": float(effect.reference_loss.mean()),
            "reference_test_accuracy": accuracy,
        }
        for k, cid in enumerate(effect.client_ids)
    ]


def block_rows(
    estimator: str,
    server_round: int,
    estimate: Mapping[str, StateDict],
    truth: Mapping[str, StateDict],
    tracked: Sequence[str],
    truncated: Mapping[str, Mapping[str, int]],
) -> list[dict[str, Any]]:
    """Per client and parameter tensor: the estimated vs the true FIP."""
    rows = []
    for cid, true_state in truth.items():
        est_state = estimate[cid]
        for key, t in true_state.items():
            e = est_state[key].double()
            t = t.double()
            rows.append(
                {
                    "estimator": estimator,
                    "round": server_round,
                    "client": cid,
                    "block": key,
                    "entries": t.numel(),
                    "tracked": key in tracked,
                    "truncated": key in truncated.get(cid, {}),
                    "est_norm": float(e.norm()),
                    "true_norm": float(t.norm()),
                    "err_norm": float((e - t).norm()),
                    "dot": float((e * t).sum()),
                }
            )
    return rows


def _difference(state: StateDict, reference: StateDict) -> StateDict:
    return {k: state[k].double() - reference[k].double() for k in reference}


def _shifted(reference: StateDict, delta: StateDict) -> StateDict:
    return {k: reference[k].double() + delta[k] for k in reference}


@dataclass
class EstimateTables:
    """Rows of the estimated effects, one list per output table."""

    effects: list[dict[str, Any]] = field(default_factory=list)
    test: list[dict[str, Any]] = field(default_factory=list)
    fip: list[dict[str, Any]] = field(default_factory=list)


def compute_ground_truth(runs_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write the ground-truth and estimate tables of one scenario (module doc).

    ``runs_dir`` holds ``reference``, ``without-<k>`` for every client and any
    ``fip-<v>``. Returns the checks recorded in the manifest.
    """
    reference = RunModels.open(runs_dir / REFERENCE)
    cfg = reference.cfg
    without = {
        client_id(k): RunModels.open(runs_dir / f"without-{k}")
        for k in range(cfg.num_clients)
    }
    variants = sorted(p for p in runs_dir.glob("fip-*") if p.is_dir())
    model = reference.model()
    test = load_server_test(cfg)
    inputs = pd.read_csv(runs_dir / REFERENCE / "inputs.csv")
    effects: list[dict[str, Any]] = []
    tests: list[dict[str, Any]] = []
    estimates = EstimateTables()
    worst_round1 = 0.0
    for r in reference.store.rounds():
        fused = reference.round(r)
        w_t = fused.aggregate
        cf = {cid: run.round(r).aggregate for cid, run in without.items()}
        truth = {cid: _difference(state, w_t) for cid, state in cf.items()}
        rows = inputs[inputs["round"] == r]
        if r == 1:
            for k, cid in enumerate(fused.client_ids):
                loo = leave_one_out_state(fused, k)
                worst_round1 = max(
                    worst_round1,
                    max(
                        float((cf[cid][n].double() - v).abs().max())
                        for n, v in loo.items()
                    ),
                )
        picked = _traced_inputs(rows, test)
        if picked is not None:
            x, predicted, labels, keys = picked
            effect = counterfactual_effects(model, w_t, cf, x, predicted)
            if not torch.equal(effect.predicted_labels, predicted):
                raise StudyError(
                    f"round {r}: the kept global model does not predict what the "
                    f"reference run traced (inputs.csv); models and results differ"
                )
            true = counterfactual_effects(model, w_t, cf, x, labels)
            effects += effect_rows(effect, true, keys)
        whole = counterfactual_effects(model, w_t, cf, test.features, test.labels)
        tests += test_rows(r, whole, test.labels)
        loo_states = {
            cid: leave_one_out_state(fused, k) for k, cid in enumerate(fused.client_ids)
        }
        _estimate(
            estimates,
            ROUND_LOO,
            r,
            model,
            w_t,
            loo_states,
            {c: _difference(s, w_t) for c, s in loo_states.items()},
            truth,
            (),
            {},
            picked,
            test,
        )
        for name, run_dir in [("fedinfluence", runs_dir / REFERENCE)] + [
            (f"fedinfluence-{p.name.removeprefix('fip-')}", p) for p in variants
        ]:
            saved = load_estimates(run_dir, r)
            states = {c: _shifted(w_t, e) for c, e in saved.fip.items()}
            _estimate(
                estimates,
                name,
                r,
                model,
                w_t,
                states,
                saved.fip,
                truth,
                saved.tracked,
                saved.truncated,
                picked,
                test,
            )
    same_training = {}
    final = reference.store.load_final()
    for path in variants:
        other = ModelStore.open(path).load_final()
        same_training[path.name] = all(torch.equal(final[k], other[k]) for k in final)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "effects.csv", effects, _columns(effects))
    write_csv(out_dir / "test_effects.csv", tests, _columns(tests))
    write_csv(
        out_dir / "estimates_effects.csv",
        estimates.effects,
        _columns(estimates.effects),
    )
    write_csv(out_dir / "estimates_test.csv", estimates.test, _columns(estimates.test))
    write_csv(out_dir / "estimates_fip.csv", estimates.fip, _columns(estimates.fip))
    return {
        "round1_retrained_vs_round_loo_max_abs": worst_round1,
        "variant_final_model_equals_reference": same_training,
    }


def _traced_inputs(
    rows: pd.DataFrame, test: LabeledTensors
) -> tuple[Any, Tensor, Tensor, dict[str, list[Any]]] | None:
    if rows.empty:
        return None
    index = torch.as_tensor(rows["input_index"].to_numpy().copy())
    predicted = torch.as_tensor(rows["predicted_label"].to_numpy().copy())
    labels = test.labels[index]
    if not torch.equal(labels, torch.as_tensor(rows["true_label"].to_numpy().copy())):
        raise StudyError("inputs.csv true labels differ from the server's test split")
    keys = {
        name: rows[name].tolist()
        for name in ("round", "input_index", "mode", "true_label", "predicted_label")
    }
    return test.select_features(index), predicted, labels, keys


def _estimate(
    tables: EstimateTables,
    name: str,
    server_round: int,
    model: nn.Module,
    w_t: StateDict,
    states: Mapping[str, StateDict],
    fip: Mapping[str, StateDict],
    truth: Mapping[str, StateDict],
    tracked: Sequence[str],
    truncated: Mapping[str, Mapping[str, int]],
    picked: tuple[Any, Tensor, Tensor, dict[str, list[Any]]] | None,
    test: LabeledTensors,
) -> None:
    """One estimator's rows of one round (per input, test set, FIP blocks)."""
    if picked is not None:
        x, predicted, labels, keys = picked
        effect = counterfactual_effects(model, w_t, dict(states), x, predicted)
        true = counterfactual_effects(model, w_t, dict(states), x, labels)
        tables.effects += [
            {"estimator": name, **row} for row in effect_rows(effect, true, keys)
        ]
    whole = counterfactual_effects(model, w_t, dict(states), test.features, test.labels)
    tables.test += [
        {"estimator": name, **row}
        for row in test_rows(server_round, whole, test.labels)
    ]
    tables.fip += block_rows(name, server_round, fip, truth, tracked, truncated)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(rows[0]) if rows else []


def input_digest(runs_dir: Path) -> str:
    """SHA-256 over every file the tables are computed from (cache key)."""
    digest = hashlib.sha256(f"tables-v{TABLES_VERSION}".encode())
    files = [runs_dir / REFERENCE / "inputs.csv"]
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        files += [run / "run.json", run / "models" / "manifest.json"]
        files += sorted((run / ESTIMATES_DIR).glob("*.safetensors"))
    for path in files:
        if path.is_file():
            digest.update(str(path.relative_to(runs_dir)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def ground_truth(runs_dir: Path, out_dir: Path, *, force: bool = False) -> bool:
    """Compute the scenario's tables unless cached; True if (re)computed."""
    digest = input_digest(runs_dir)
    manifest_path = out_dir / "manifest.json"
    cached = manifest_path.is_file() and (
        json.loads(manifest_path.read_text()).get("inputs_sha256") == digest
    )
    if cached and not force:
        return False
    start = time.perf_counter()
    checks = compute_ground_truth(runs_dir, out_dir)
    runs = {}
    for run in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        info = _read_run_json(run)
        runs[run.name] = {
            "status": info.get("status"),
            "started": info.get("started"),
            "finished": info.get("finished"),
            "exclude-partitions": info["config"].get("exclude-partitions", ""),
        }
    write_json(
        manifest_path,
        {
            "tables_version": TABLES_VERSION,
            "inputs_sha256": digest,
            "runs_dir": _relative(runs_dir),
            "runs": runs,
            "checks": checks,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
    return True


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# -------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: run the study's federations, then compute its ground-truth tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="name of a conf/<name>.truth.toml")
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--scenario", action="append", default=[])
    parser.add_argument("--force", action="store_true", help="re-run every run")
    parser.add_argument("--rerun-changed", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument(
        "--tables-only", action="store_true", help="recompute tables, run nothing"
    )
    args = parser.parse_args(argv)
    results = args.results.resolve()
    try:
        study = load_study(args.study, args.conf_dir)
        unknown = [s for s in args.scenario if s not in study.scenarios]
        if unknown:
            raise StudyError(f"no scenario {unknown}; known: {list(study.scenarios)}")
        if args.scenario:
            study = Study(
                study.name,
                study.path,
                study.base,
                {s: study.scenarios[s] for s in args.scenario},
                study.variants,
                study.variant_scenarios,
            )
        plans = plan_study(
            study, results, force=args.force, rerun_changed=args.rerun_changed
        )
    except (StudyError, GridError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for scenario, ps in plans.items():
            for plan in ps:
                print(f"{plan.action:6s} {scenario}/{plan.run.name}")
        return 0
    if not args.tables_only:
        refused = {
            s: ps for s, ps in plans.items() if any(p.action == "refuse" for p in ps)
        }
        for scenario, ps in refused.items():
            print(
                refusal_message(ps, scenario_dirs(results, study, scenario)[0]),
                file=sys.stderr,
            )
        if refused:
            return 2
        run_plans(plans, results, study)
    for scenario in study.scenarios:
        runs_dir, out_dir = scenario_dirs(results, study, scenario)
        start = time.perf_counter()
        done = ground_truth(runs_dir, out_dir, force=args.tables_only)
        state = "computed" if done else "cached"
        print(
            f"[{scenario}] ground truth {state} in {time.perf_counter() - start:.0f}s: "
            f"{_relative(out_dir)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
