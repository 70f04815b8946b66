#!/usr/bin/env bash
# Issue 14 - every attribution method side by side on the same rounds, in
# three experiments (run in this order; each skips its completed runs):
#   methods         MNIST-5k cnn: alpha {0.1, 0.3, 1.0} x {10 of 10, 4 of 10
#                   clients per round} x 3 seeds x 5 rounds
#   methods-faulty  Table 1's faulty client (client 0 flips 1-9 to 0), all
#                   10 clients, alpha 0.3, 3 seeds x 5 rounds
#   methods-resnet  ResNet-18 (BatchNorm), alpha 0.3, all 10 clients, 8 rounds
# The paper method is the reproduction (provenance-layers = "paper").
# Configs: conf/methods*.toml and conf/methods*.grid.toml.
# Flags go to every experiment: --plot-only rebuilds tables/figures from the
# CSVs, --dry-run lists the runs, --scale paper the paper's scale; or name
# experiments first: `bash scripts/methods.sh methods-faulty -- --dry-run`.
# Outputs: results/methods*/ (per-run CSVs, summary.csv, methods_summary.csv,
# methods.png/pdf), figures copied to _static/.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
experiments=()
while [ $# -gt 0 ] && [ "$1" != "--" ] && [ "${1#-}" = "$1" ]; do
    experiments+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
[ ${#experiments[@]} -gt 0 ] || experiments=(methods methods-faulty methods-resnet)
for experiment in "${experiments[@]}"; do
    python -m tooling.experiments "$experiment" "$@"
done
