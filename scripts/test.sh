#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite offline.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k provenance -x
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/setup.sh"
cd "$REPO"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m pytest "$@"
