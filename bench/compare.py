"""Compare training variants at the same budget over several seeds: final val loss of each.

    python bench/compare.py --seeds 1337,1 --variant train.schedule=cosine --variant train.schedule=wsd
    python bench/compare.py shakespeare_char train.max_steps=2000 --seeds 1,2,3 \\
        --variant "" --variant "train.schedule=wsd train.decay_fraction=0.3"

Each run is ``python train.py [PRESET] [overrides] [variant] seed=S`` in a fresh process (W&B off,
a temporary out_dir); its figure is the final full evaluation on the val split (out_dir/eval.json).
Steps, not seconds, are the budget, so the comparison does not depend on the machine's speed.
Prints one JSON line per run and a Markdown table of mean and spread per variant.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def train(args: list[str], seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "train.py"), *args, f"seed={seed}", f"out_dir={out}", "wandb.mode=disabled"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{r.stderr[-3000:]}")
        final = json.loads((out / "eval.json").read_text())
    return {"args": args, "seed": seed, "val_loss": round(final["loss"], 4), "bits_per_byte": final["bits_per_byte"]}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("common", nargs="*", help="preset and key=value overrides every run shares")
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds")
    parser.add_argument("--variant", action="append", required=True, help="overrides of one variant ('' for none)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[float]] = {}
    for seed in seeds:  # seeds outermost: the variants of one seed run side by side
        for variant in args.variant:
            record = train([*args.common, *shlex.split(variant)], seed)
            results.setdefault(variant or "(preset)", []).append(record["val_loss"])
            print(json.dumps(record), flush=True)
    print(f"\n{' '.join(args.common) or 'default preset'}, seeds {args.seeds}: final val loss (full val split)\n")
    print("| variant | val loss per seed | mean | spread (max - min) |")
    print("| --- | --- | --- | --- |")
    for variant, losses in results.items():
        per_seed = ", ".join(f"{x:.4f}" for x in losses)
        print(f"| {variant} | {per_seed} | {statistics.fmean(losses):.4f} | {max(losses) - min(losses):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
