#!/usr/bin/env bash
# Table 3 / Fig. 5 - scalability in total clients and rounds.
# Reduced scale (offline, 2 CPUs) by default; add --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs.
# Outputs: results/table3/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments table3 "$@"
