#!/usr/bin/env bash
# Fig. 2 text bars - BERT-family / GPT on DBpedia-14 and Yahoo Answers.
# Config: conf/fig2-text.toml (a Flower run config: `flwr run . --run-config
# conf/fig2-text.toml` runs one point) and its grid conf/fig2-text.grid.toml.
# Reduced scale (offline, 2 CPUs) by default; --scale paper for the paper's
# settings, --plot-only to rebuild tables/figures from existing CSVs,
# --dry-run to list the runs. A completed run is skipped only if its stored
# config is the one it would run now (else: refused; --rerun-changed).
# Outputs: results/fig2-text/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
# Needs the data: --data-dir <parent of dbpedia_14/ and yahoo_answers_topics/>
# or Hub access.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments fig2-text "$@"
