#!/usr/bin/env bash
# Table 2 / Fig. 4 - differential privacy.
# Reduced scale (offline, 2 CPUs) by default; add --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs.
# Outputs: results/dp/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments dp "$@"
