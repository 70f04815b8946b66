#!/usr/bin/env bash
# Aggregators - localization and a faulty client under each of Flower's
# strategies (fedavg ... bulyan): does a robust aggregator drop the faulty
# client, and does provenance then stop blaming it?
# Config: conf/aggregators.toml (a Flower run config: `flwr run . --run-config
# conf/aggregators.toml` runs one point, FedAvg without a faulty client) and
# its grid conf/aggregators.grid.toml (every aggregator x {clean, faulty}).
# Reduced scale (offline, 2 CPUs) by default; --scale paper for the paper's
# Table 1 scale, --plot-only to rebuild tables/figures from existing CSVs,
# --dry-run to list the runs. A completed run is skipped only if its stored
# config is the one it would run now (else: refused; --rerun-changed).
# Outputs: results/aggregators/ (per-run CSVs, summary.csv/.tex,
# aggregators.csv, aggregator_methods.csv, aggregator_shares.csv,
# aggregators.md with the README's tables, aggregators.png/.pdf).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments aggregators "$@"
