#!/usr/bin/env bash
# A client gaming its attribution (front-load, sharpen) vs an honest run.
# Config: conf/gaming.toml (a Flower run config: `flwr run . --run-config
# conf/gaming.toml` runs one point) and its grid conf/gaming.grid.toml.
# Reduced scale (offline, 2 CPUs) by default; --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs,
# --dry-run to list the runs. A completed run is skipped only if its stored
# config is the one it would run now (else: refused; --rerun-changed).
# Outputs: results/gaming/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments gaming "$@"
