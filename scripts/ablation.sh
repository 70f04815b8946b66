#!/usr/bin/env bash
# Beyond the paper - ablation of the data-share factor p_k (Eq. 5) and the
# layer decay beta (Eq. 6): MNIST-5k, 10 clients, alpha=0.3, cnn, 3 rounds.
# Config: conf/ablation.toml (a Flower run config: `flwr run . --run-config
# conf/ablation.toml` runs one point) and its grid conf/ablation.grid.toml.
# Reduced scale (offline, 2 CPUs) by default; --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs,
# --dry-run to list the runs. A completed run is skipped only if its stored
# config is the one it would run now (else: refused; --rerun-changed).
# Outputs: results/ablation/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments ablation "$@"
