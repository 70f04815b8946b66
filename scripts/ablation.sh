#!/usr/bin/env bash
# Beyond the paper - ablation of the data-share factor p_k (Eq. 5) and the
# layer decay beta (Eq. 6): MNIST-5k, 10 clients, alpha=0.3, cnn, 3 rounds.
# Outputs: results/ablation/ (per-run CSVs, summary.csv/.tex, PNG/PDF figures).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
exec python -m tooling.experiments ablation "$@"
