#!/usr/bin/env bash
# Check a GPU machine in one command (at most 8 minutes on one H100 or H200): the CUDA tests, the
# GPT-2 124M benchmark and a two-minute shakespeare_char training, logs and report.json in OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR              # from anywhere; runs from the repository root
#   bash bench/gpu_check.sh OUT_DIR --dry-run    # list what it would run, and exit
#
# It runs this source tree in place (on PYTHONPATH: nothing to install but pytest), with W&B off and
# no network: the Python there needs torch (2.5 or newer) and accelerate; pytest, where missing, is
# installed from the wheels that bench/offline_bundle.sh fetched into .whl/ (or $WHEELS), which also
# prepared the built-in datasets into data/. Neither wandb nor datasets is needed. See
# launch/README.md, "GPU machines without network". PYTHON picks the interpreter (default python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
wheels=${WHEELS:-$root/.whl}
if [[ $# -lt 1 ]]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR [--dry-run]" >&2
    exit 2
fi
export WANDB_MODE=disabled
if [[ " $* " != *" --dry-run "* ]] && ! "$python" -c "import pytest" 2>/dev/null; then
    if ! compgen -G "$wheels/pytest-*.whl" >/dev/null; then
        echo "error: pytest is not installed and $wheels holds no pytest wheel; run bench/offline_bundle.sh" \
            "on a machine with network and copy the folder here (or pip install pytest)" >&2
        exit 2
    fi
    echo "installing pytest from $wheels (no network)"
    "$python" -m pip install --quiet --no-index --find-links "$wheels" pytest ||
        "$python" -m pip install --quiet --user --no-index --find-links "$wheels" pytest
fi
exec "$python" "$root/bench/gpu_check.py" "$@"
