#!/usr/bin/env bash
# What a GPU machine without network needs to run this project, fetched on a machine with network
# (this repository installed there, `pip install -e .`): wheels into .whl/, the built-in datasets
# into data/. Copy the repository with both folders (git ignores them) to the GPU machine.
#
#   bash bench/offline_bundle.sh                       # pytest and setuptools: enough for bench/gpu_check.sh
#   bash bench/offline_bundle.sh matplotlib            # and any other package the GPU machine lacks
#   PYTHON_VERSION=3.12 PLATFORM=manylinux2014_aarch64 bash bench/offline_bundle.sh   # another target
#
# The target's Python must already have torch and accelerate. Training needs neither wandb (with W&B
# off) nor datasets (with the data prepared here), so they are not fetched: with the default
# selection the folder is under 3 MB. On the GPU machine, without network:
#
#   pip install --no-index --find-links .whl pytest            # what bench/gpu_check.sh does itself
#   pip install --no-index --find-links .whl --no-deps -e .    # install the project (else use PYTHONPATH)
#
# Environment: WHEELS (default .whl/ in the repository), PYTHON_VERSION (default 3.10: the pure-Python
# wheels then suit 3.10 and newer), PLATFORM (default manylinux2014_x86_64).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=${WHEELS:-$root/.whl}
data_root=$root/data  # data.root of the presets, from the repository root
# exceptiongroup and tomli: what pytest needs on Python 3.10 only (pip's markers follow this Python)
packages=(pytest exceptiongroup tomli setuptools "$@")
python -m pip download --quiet --only-binary=:all: --implementation cp \
    --python-version "${PYTHON_VERSION:-3.10}" --platform "${PLATFORM:-manylinux2014_x86_64}" \
    --dest "$wheels" "${packages[@]}"
echo "wheels in $wheels ($(du -sh "$wheels" | cut -f1)):"
ls "$wheels"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" python - "$data_root" <<'PY'
import sys

from gpt.prepared import ensure_dataset

for name in ("shakespeare_char", "shakespeare_gpt2"):  # what gpu_check's training and benchmark read
    print(f"dataset {ensure_dataset(sys.argv[1], name)}")
PY
