#!/usr/bin/env bash
# Table 1 / Fig. 6 - faulty-client localization vs FedDebug.
# Reduced scale (offline, 2 CPUs) by default; add --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs.
# Outputs: results/table1/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments table1 "$@"
