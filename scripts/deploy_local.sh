#!/usr/bin/env bash
# Run TraceFL on Flower's deployment engine on this machine: one SuperLink and
# N SuperNodes on free 127.0.0.1 ports (insecure, no runtime `uv sync`), then
# `flwr run --stream` until the run finishes. Every process started here is
# stopped by PID afterwards, also on failure, Ctrl-C, SIGTERM or a SIGKILL of
# this launcher (a reaper process stops what it left).
#
#   scripts/deploy_local.sh [N] [key=value ...]
#   scripts/deploy_local.sh 3 num-server-rounds=2 output-dir=/tmp/tracefl-deploy
#
# N (default 3) is the number of SuperNodes and sets num-clients=N. Logs of the
# SuperLink and each SuperNode go to $TRACEFL_DEPLOY_LOGS (default: a tmp dir,
# printed at start). Results: output-dir (default results/deploy-<N>/).
# Exit code: 0 only if run.json says "completed" (1 otherwise, 2 bad config).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
N=3
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then N="$1"; shift; fi
ARGS=(--deployment "$N" --output-dir "$REPO/results/deploy-$N")
[[ -n "${TRACEFL_DEPLOY_LOGS:-}" ]] && ARGS+=(--log-dir "$TRACEFL_DEPLOY_LOGS")
for kv in "$@"; do ARGS+=(-c "$kv"); done
exec python -m tooling.flower_local "${ARGS[@]}"
