#!/usr/bin/env bash
# Fig. 2 text bars - BERT-family / GPT on DBpedia-14 and Yahoo Answers (needs the data: --data-dir or the Hub).
# Reduced scale (offline, 2 CPUs) by default; add --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs.
# Outputs: results/fig2-text/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments fig2-text "$@"
