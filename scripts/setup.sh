#!/usr/bin/env bash
# Create or reuse ./.venv and install TraceFL with its dev extra when needed.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TRACEFL_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.tracefl-install-stamp"
WANT="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ] \
    || ! "$VENV/bin/python" -c "import tracefl, flwr, torch" >/dev/null 2>&1; then
    echo "[setup] installing TraceFL and its dependencies (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null
    # torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml: they
    # resolve from this machine's local wheel index, not multi-GB downloads.
    "$VENV/bin/python" -m pip install --quiet -e "$REPO[dev]"
    echo "$WANT" > "$STAMP"
fi
# Flower: never `uv sync` the app into a fresh multi-GB venv per run (read when
# a SuperLink starts, so it must be set before `flwr run` starts one).
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_DISABLE_UPDATE_CHECK=1
# Ray (Flower's simulation backend) on 127.0.0.1 only: with "Ray clusters" off
# its GCS, raylet and workers bind loopback instead of every interface. Set 1
# beforehand to let other hosts join.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}"
export MPLBACKEND=Agg
export PATH="$VENV/bin:$PATH"
