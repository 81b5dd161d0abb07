"""Which settings make a training step fastest on this CPU, at a fixed model.

    flock -x /tmp/cpu.lock python bench/cpu_settings.py                 # nanoGPT's CPU recipe model
    python bench/cpu_settings.py PRESET key=value ... --steps 60        # another model

Each setting runs ``python -m gpt.bench`` (the trainer's step) in a fresh process, in two passes over
all settings; the table gives the median over both passes' steps, and tokens/s against the first
row. A second table times one AdamW update of the same model's parameters with each of torch's
three implementations (for-loop, foreach, fused). Prints Markdown tables for docs/benchmarks.md and
the raw JSON records.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from gpt.bench import run_in_subprocess
from gpt.config import load_config
from gpt.model import build_model

SETTINGS = [  # (label, extra gpt.bench arguments)
    ("fp32, 2 threads (default)", []),
    ("fp32, 1 thread", ["--threads", "1"]),
    ("fp32 matmuls as bf16 (train.matmul_precision=medium)", ["train.matmul_precision=medium"]),
    ("bf16 autocast (train.mixed_precision=bf16)", ["train.mixed_precision=bf16"]),
    ("explicit attention (model.attention=explicit)", ["model.attention=explicit"]),
    ("bf16 autocast + explicit attention", ["train.mixed_precision=bf16", "model.attention=explicit"]),
    ("torch.compile (train.compile=true)", ["train.compile=true", "--warmup", "10"]),
    ("torch.compile + bf16 autocast", ["train.compile=true", "train.mixed_precision=bf16", "--warmup", "10"]),
    ("no biases (model.bias=false)", ["model.bias=false"]),
    ("the same batch as 2 micro-batches of 6", ["train.micro_batch_size=6"]),
    ("batch 48 (4x the tokens per step)", ["train.batch_size=48", "train.micro_batch_size=48"]),
    (
        "batch 48 + bf16 autocast + explicit attention",
        ["train.batch_size=48", "train.micro_batch_size=48", "train.mixed_precision=bf16", "model.attention=explicit"],
    ),
]


def adamw_step_ms(config_args: list[str], repeats: int = 200) -> dict[str, float]:
    """Median ms of one AdamW step over the model's parameters, per implementation."""
    cfg = load_config(config_args)
    cfg.model.vocab_size = cfg.model.vocab_size or 65
    params = list(build_model(cfg.model).parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kwargs in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-3, **kwargs)
        times = []
        for i in range(repeats + 10):
            start = time.perf_counter()
            opt.step()
            if i >= 10:
                times.append(time.perf_counter() - start)
        out[name] = 1000 * statistics.median(times)
    return out


def pooled(records: list[dict]) -> dict:
    """Median and spread over the steps of several passes of one setting."""
    steps = sorted(ms for r in records for ms in r["step_ms"])
    median = statistics.median(steps)
    return {
        "median": median,
        "p10": steps[int(0.1 * len(steps))],
        "p90": steps[min(len(steps) - 1, int(0.9 * len(steps)))],
        "tokens_per_s": records[0]["batch_size"] * records[0]["model"]["block_size"] / (median / 1000),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per setting and pass (default 60)")
    parser.add_argument("--passes", type=int, default=2, help="passes over all settings, pooled (default 2)")
    args, config_args = parser.parse_known_args(argv)
    config_args = config_args or ["nanogpt_cpu"]
    runs: dict[str, list[dict]] = {label: [] for label, _ in SETTINGS}
    for _ in range(args.passes):  # passes interleave settings, so a disturbance hits one pass of several
        for label, extra in SETTINGS:
            record = run_in_subprocess([*config_args, "--steps", str(args.steps), *extra])
            runs[label].append(record)
            print(json.dumps({"setting": label} | record), flush=True)
    stats = {label: pooled(records) for label, records in runs.items()}
    base = stats[SETTINGS[0][0]]["tokens_per_s"]
    print(f"\nModel: {' '.join(config_args)}; {args.passes} passes x {args.steps} timed steps per setting, trainer\n")
    print("| setting | median ms/step | p10-p90 ms | tokens/s | tokens/s vs default |")
    print("| --- | --- | --- | --- | --- |")
    for label, st in stats.items():
        print(
            f"| {label} | {st['median']:.1f} | {st['p10']:.1f}-{st['p90']:.1f} | "
            f"{st['tokens_per_s']:,.0f} | {st['tokens_per_s'] / base:.2f}x |"
        )
    times = adamw_step_ms(config_args)
    print(f"\nOne AdamW step over the model's parameters ({torch.get_num_threads()} threads):\n")
    print("| implementation | median ms |")
    print("| --- | --- |")
    for name, ms in times.items():
        print(f"| {name} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
