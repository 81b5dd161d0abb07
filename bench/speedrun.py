"""The CPU speedrun: lowest val loss on Shakespeare characters in 150 s of wall clock, start-up included.

    flock -x /tmp/cpu.lock python bench/speedrun.py final --runs 3          # the preset, three times
    flock -x /tmp/cpu.lock python bench/speedrun.py ablate rope muon        # one run per feature switched off
    flock -x /tmp/cpu.lock python bench/speedrun.py nanogpt                 # nanoGPT's CPU recipe, for reference
    python bench/speedrun.py report                                          # Markdown tables of all runs

Each run is ``python train.py speedrun_cpu ...`` in a fresh process with W&B off; the wall clock is
taken around the whole process (interpreter start-up, imports, data, model, training, final
evaluation, checkpoint), and the val loss is the final full pass over the val split (gpt.evaluate);
the train loss is the windowed estimate at the last step. Records are appended to
docs/speedrun_cpu.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "speedrun_cpu.jsonl"
BUDGET_S = 150.0

# Each ablation changes one choice of configs/speedrun_cpu.yaml: (overrides, what the ablated run uses).
ABLATIONS = {
    "rope": (["model.position=learned"], "learned absolute positions instead of rotary"),
    "rmsnorm": (["model.norm=layernorm"], "LayerNorm instead of RMSNorm"),
    "no_bias": (["model.bias=true"], "with biases"),
    "qk_norm": (["model.qk_norm=false"], "without QK-norm"),
    "relu2": (["model.mlp=gelu"], "GELU instead of ReLU^2"),
    "untied": (["model.tie_head=true"], "tied LM head"),
    "zero_init": (["model.zero_init_proj=false"], "GPT-2 init of the output projections instead of zero"),
    "muon": (["train.optimizer=muon"], "Muon for the block matrices (AdamW for the rest) instead of AdamW"),
    "explicit_attention": (["model.attention=sdpa"], "torch's fused attention kernel instead of explicit"),
}


def train_once(preset: str, overrides: list[str], label: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, str(ROOT / "train.py"), preset, f"out_dir={out}", "resume=false", "wandb.mode=disabled"]
        start = time.perf_counter()
        r = subprocess.run([*cmd, *overrides], capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - start
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd + overrides)} failed:\n{r.stderr[-3000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last_eval = [row for row in rows if "eval/val/loss" in row][-1]
    final = [row for row in rows if "final/val/loss" in row][-1]  # the full pass over the val split
    speeds = [row["step_ms"] for row in rows if "step_ms" in row]
    record = {
        "label": label,
        "preset": preset,
        "overrides": overrides,
        "wall_s": round(wall, 2),
        "val_loss": round(final["final/val/loss"], 4),
        "train_loss": round(last_eval["eval/train/loss"], 4),
        "steps": last_eval["step"],
        "tokens": last_eval["tokens"],
        "median_logged_step_ms": round(statistics.median(speeds), 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def report() -> None:
    records = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    finals = [r for r in records if r["label"] == "final"]
    if finals:
        losses = [r["val_loss"] for r in finals]
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in finals)
        print(
            f"Final preset, {len(finals)} runs: val loss median {statistics.median(losses):.4f}, "
            f"min {min(losses):.4f}, max {max(losses):.4f}; wall clock {walls} s\n"
        )
    print("| run | val loss | train loss | steps | tokens | wall clock s | median ms/step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in records:
        name = r["label"] if r["label"] in ("final", "nanogpt") else f"{r['label']}: {ABLATIONS[r['label']][1]}"
        print(
            f"| {name} | {r['val_loss']:.4f} | {r['train_loss']:.4f} | {r['steps']:,} | {r['tokens']:,} | "
            f"{r['wall_s']:.1f} | {r['median_logged_step_ms']:.1f} |"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_final = sub.add_parser("final", help="run configs/speedrun_cpu.yaml")
    p_final.add_argument("--runs", type=int, default=3)
    p_ablate = sub.add_parser("ablate", help="one run per named feature, switched off")
    p_ablate.add_argument("features", nargs="+", choices=sorted(ABLATIONS))
    sub.add_parser("nanogpt", help="nanoGPT's CPU recipe (configs/nanogpt_cpu.yaml) through this trainer")
    sub.add_parser("report", help="print the tables")
    args = parser.parse_args(argv)
    if args.command == "final":
        for _ in range(args.runs):
            train_once("speedrun_cpu", [], "final")
    elif args.command == "ablate":
        for feature in args.features:
            train_once("speedrun_cpu", ABLATIONS[feature][0], feature)
    elif args.command == "nanogpt":
        train_once("nanogpt_cpu", [], "nanogpt")
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
