#!/usr/bin/env bash
# Fig. 3 - Dirichlet alpha sweep 0.1..1.0.
# Reduced scale (offline, 2 CPUs) by default; add --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs.
# Outputs: results/fig3/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments fig3 "$@"
