#!/usr/bin/env bash
# The README's main command, timed end to end in an empty folder: data preparation, training, final
# evaluation, W&B (offline, as without credentials), then one sample.
#
#   bash bench/default_run.sh
#
# Prints the wall-clock seconds of `accelerate launch train.py`, its final val loss, and a sample.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work"
start=$(date +%s.%N)
accelerate launch "$root/train.py" > train.log 2>&1
end=$(date +%s.%N)
grep -v "^wandb:" train.log | grep -E "accumulation|step 1500|done:" || true
echo "wall clock of 'accelerate launch train.py': $(echo "$end - $start" | bc) s"
python "$root/sample.py" --num_samples 1 --max_new_tokens 300 --start "ROMEO:"
rm -rf "$work"
