#!/usr/bin/env bash
# Fed-Influence vs. TraceFL against the ground truth by retraining (issue 16).
# Study: conf/fedinfluence.truth.toml (scenarios, Fed-Influence variants) on the
# run config conf/fedinfluence.toml. Runs, one after the other through Flower's
# simulation engine, per scenario: the reference (every method, Fed-Influence),
# each variant (same training, other Fed-Influence settings) and one retraining
# without each client; then the ground-truth tables (cached), then the
# comparison (results/fedinfluence/comparison/, _static/fedinfluence_truth.png).
# Completed runs with an unchanged config are skipped.
#   bash scripts/fedinfluence.sh              # everything (about 17 runs)
#   bash scripts/fedinfluence.sh --plot-only  # comparison from existing tables
#   bash scripts/fedinfluence.sh --dry-run    # list the runs
# Other options go to `python -m tooling.retraining` (e.g. --scenario correct).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
if [ "${1:-}" = "--plot-only" ]; then
    exec python -m tooling.truth_comparison fedinfluence
fi
python -m tooling.retraining fedinfluence "$@"
case " $* " in *" --dry-run "*) exit 0 ;; esac
exec python -m tooling.truth_comparison fedinfluence
