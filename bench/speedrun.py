"""The CPU speedrun: lowest val loss on Shakespeare characters in 150 s of wall clock, start-up included.

    flock -x /tmp/cpu.lock python bench/speedrun.py final --runs 3          # the preset, three times
    flock -x /tmp/cpu.lock python bench/speedrun.py seeds --runs 5 --target 1.555   # seeds 1..5, with a t-test
    flock -x /tmp/cpu.lock python bench/speedrun.py pair --runs 5 train.schedule=cosine   # against a baseline
    flock -x /tmp/cpu.lock python bench/speedrun.py ablate rope muon        # one run per feature switched off
    flock -x /tmp/cpu.lock python bench/speedrun.py nanogpt                 # nanoGPT's CPU recipe, for reference
    flock -x /tmp/cpu.lock python bench/speedrun.py steptime value_embeds    # ms/step beside the preset's
    python bench/speedrun.py report                                          # Markdown tables of all runs

Each run is ``python train.py speedrun_cpu ...`` in a fresh process with W&B off; the wall clock is
taken around the whole process (interpreter start-up, imports, data, model, training, final
evaluation, checkpoint), and the val loss is the final full pass over the val split (gpt.evaluate);
the train loss is the windowed estimate at the last step. Records are appended to
docs/speedrun_cpu.jsonl.

A record holds over seeds or not at all: ``seeds`` trains the preset with seeds 1..N and reports the
mean, standard deviation, min/max of the final val loss and the one-sided p-value (``gpt.stats``,
a t-test) that the mean is below ``--target``; modded-nanogpt accepts a record at p < 0.01.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt.stats import one_sided_t_test  # noqa: E402

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
    "wsd": (["train.schedule=cosine"], "a cosine decay over the whole budget instead of warmup-stable-decay"),
    "embed_lr": (["train.embed_lr_scale=1"], "the token embedding at the base learning rate instead of 10x"),
}

# Switches from the GPT-2 speedrun (modded-nanogpt) that the preset can turn on: (overrides, what they do).
SWITCHES = {
    "unet_skips": (["model.unet_skips=true"], "U-net skips from the first half of the blocks to the second"),
    "value_embeds": (["model.value_embeds=2"], "two value embeddings (blocks 0, 1 and 2, 3)"),
    "logit_softcap": (["model.logit_softcap=15"], "logits soft-capped at 15"),
    "embed_lr": (["train.embed_lr_scale=5"], "5x the learning rate for the token embedding"),
}


def step_times(switches: list[str], rounds: int, steps: int) -> None:
    """Median ms per step of the preset with each switch turned on, beside the preset's own: plain training
    loops (gpt.bench's) of every variant in one process, in alternating rounds, so that all of them see the
    same machine state (this machine's speed drifts by a third between neighbouring runs)."""
    from gpt.bench import bare_runner, bench_config

    variants = {"preset": [], **{name: SWITCHES[name][0] for name in switches}}
    runners = {name: bare_runner(bench_config(["speedrun_cpu", *o])) for name, o in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for runner in runners.values():
        runner.run(2)  # warm-up
    for _ in range(rounds):
        for name, runner in runners.items():
            times[name] += runner.run(steps)
    base = statistics.median(times["preset"])
    print("| variant | median ms/step | vs the preset |\n| --- | --- | --- |")
    for name, seconds in times.items():
        print(f"| {name} | {1000 * statistics.median(seconds):.1f} | {statistics.median(seconds) / base:.3f} |")


def train_once(preset: str, overrides: list[str], label: str, batch: str = "") -> dict:
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
    if batch:  # runs of one `seeds` command
        record["batch"] = batch
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record


def run_name(record: dict) -> str:
    if record["label"] in ("final", "nanogpt"):
        return record["label"]
    if record["label"] == "seeds":
        return " ".join(record["overrides"])
    return f"{record['label']}: {ABLATIONS[record['label']][1]}"


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
        name = run_name(r)
        print(
            f"| {name} | {r['val_loss']:.4f} | {r['train_loss']:.4f} | {r['steps']:,} | {r['tokens']:,} | "
            f"{r['wall_s']:.1f} | {r['median_logged_step_ms']:.1f} |"
        )


def significance(records: list[dict], target: float) -> str:
    """A Markdown table of the val losses of several seeds and their one-sided t-test against target."""
    test = one_sided_t_test([r["val_loss"] for r in records], target)
    seeds = ", ".join(f"{r['val_loss']:.4f}" for r in records)
    return "\n".join([
        "| seeds | val losses | mean | std | min | max | target | t | one-sided p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {test.n} | {seeds} | {test.mean:.4f} | {test.std:.4f} | {test.min:.4f} | {test.max:.4f} | "
        f"{target} | {test.t:.2f} | {test.p_value:.2g} |",
    ])  # fmt: skip


def paired(runs: list[dict], baselines: list[dict], target: float) -> str:
    """Both tables, and the one-sided paired t-test that the preset beats the baseline seed for seed."""
    diffs = [r["val_loss"] - b["val_loss"] for r, b in zip(runs, baselines, strict=True)]
    test = one_sided_t_test(diffs, 0.0)
    return "\n".join([
        "the preset:", significance(runs, target), "", "the baseline:", significance(baselines, target), "",
        f"preset - baseline, seed for seed: mean {test.mean:+.4f}, std {test.std:.4f}, one-sided p {test.p_value:.2g}",
    ])  # fmt: skip


def latest_batch(target: float) -> None:
    records = [json.loads(line) for line in RESULTS.read_text().splitlines()]
    batched = [r for r in records if r.get("batch")]
    if not batched:
        print("no `seeds` runs recorded yet")
        return
    last = [r for r in batched if r["batch"] == batched[-1]["batch"]]
    print(f"seeds of {last[0]['preset']} {' '.join(last[0]['overrides'][1:])}, batch {last[0]['batch']}:")
    print(significance(last, target))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_final = sub.add_parser("final", help="run configs/speedrun_cpu.yaml")
    p_final.add_argument("--runs", type=int, default=3)
    p_ablate = sub.add_parser("ablate", help="one run per named feature, switched off")
    p_ablate.add_argument("features", nargs="+", choices=sorted(ABLATIONS))
    sub.add_parser("nanogpt", help="nanoGPT's CPU recipe (configs/nanogpt_cpu.yaml) through this trainer")
    p_seeds = sub.add_parser("seeds", help="the preset with seeds 1..N, and a t-test of the mean val loss")
    p_seeds.add_argument("--runs", type=int, default=5)
    p_seeds.add_argument("--target", type=float, default=1.555, help="val loss the mean should be below")
    p_seeds.add_argument("overrides", nargs="*", help="key=value overrides of the preset")
    p_pair = sub.add_parser("pair", help="the preset and a baseline, seed by seed alternating, with t-tests")
    p_pair.add_argument("--runs", type=int, default=5)
    p_pair.add_argument("--target", type=float, default=1.555, help="val loss the mean should be below")
    p_pair.add_argument("baseline", nargs="+", help="key=value overrides that make the baseline from the preset")
    p_time = sub.add_parser("steptime", help="ms/step of the preset with each named switch on, alternating")
    p_time.add_argument("switches", nargs="+", choices=sorted(SWITCHES))
    p_time.add_argument("--rounds", type=int, default=3)
    p_time.add_argument("--steps", type=int, default=10, help="timed steps per variant per round")
    p_report = sub.add_parser("report", help="print the tables")
    p_report.add_argument("--target", type=float, default=1.555, help="for the t-test of the latest seeds")
    args = parser.parse_args(argv)
    if args.command == "final":
        for _ in range(args.runs):
            train_once("speedrun_cpu", [], "final")
    elif args.command == "ablate":
        for feature in args.features:
            train_once("speedrun_cpu", ABLATIONS[feature][0], feature)
    elif args.command == "seeds":
        batch = time.strftime("%Y%m%d-%H%M%S")
        runs = [
            train_once("speedrun_cpu", [f"seed={seed}", *args.overrides], "seeds", batch)
            for seed in range(1, args.runs + 1)
        ]
        print(significance(runs, args.target))
    elif args.command == "pair":  # alternating, so that the machine's drift falls on both alike
        batch = time.strftime("%Y%m%d-%H%M%S")
        runs, baselines = [], []
        for seed in range(1, args.runs + 1):
            runs.append(train_once("speedrun_cpu", [f"seed={seed}"], "seeds", batch))
            baselines.append(train_once("speedrun_cpu", [f"seed={seed}", *args.baseline], "seeds", batch + "-baseline"))
        print(paired(runs, baselines, args.target))
    elif args.command == "steptime":
        step_times(args.switches, args.rounds, args.steps)
    elif args.command == "nanogpt":
        train_once("nanogpt_cpu", [], "nanogpt")
    else:
        report()
        latest_batch(args.target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
