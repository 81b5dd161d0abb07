"""How the cost of a training step grows with model width, depth and context length, on this machine.

    flock -x /tmp/cpu.lock python bench/scaling.py run width depth      # append records to docs/scaling_cpu.jsonl
    flock -x /tmp/cpu.lock python bench/scaling.py run context
    python bench/scaling.py report                                        # Markdown table + docs/scaling_cpu.png

Every point is one ``python -m gpt.bench`` process (the trainer's step; its own peak memory), in fp32
and with bf16 autocast. The base model is 4 layers, 128 wide (head size 32), context 256, and every
step holds 8,192 tokens (batch 32 at context 256), so that the context sweep keeps the tokens per
step fixed and shows what longer attention costs per token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gpt.bench import run_in_subprocess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "scaling_cpu.jsonl"
PLOT = ROOT / "docs" / "scaling_cpu.png"
TOKENS_PER_STEP = 8192
BASE = {"n_layer": 4, "n_embd": 128, "block_size": 256}
SWEEPS = {
    "width": ("n_embd", [64, 128, 256, 384, 512]),
    "depth": ("n_layer", [1, 2, 4, 8, 12]),
    "context": ("block_size", [128, 256, 512, 1024, 2048]),
}
PRECISIONS = ("no", "bf16")


def point_args(model: dict[str, int], precision: str, steps: int) -> list[str]:
    batch = TOKENS_PER_STEP // model["block_size"]
    return [
        f"model.n_layer={model['n_layer']}", f"model.n_embd={model['n_embd']}", f"model.n_head={model['n_embd'] // 32}",
        f"model.block_size={model['block_size']}", f"train.batch_size={batch}", f"train.micro_batch_size={batch}",
        f"train.mixed_precision={precision}", "--steps", str(steps), "--warmup", "2",
    ]  # fmt: skip


def run(sweeps: list[str], steps: int) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    for sweep in sweeps:
        key, values = SWEEPS[sweep]
        for precision in PRECISIONS:
            for value in values:
                model = BASE | {key: value}
                record = run_in_subprocess(point_args(model, precision, steps), timeout=900)
                record["sweep"] = sweep
                with open(RESULTS, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"{sweep} {key}={value} {precision}: {record['step_ms_median']:.1f} ms/step, "
                    f"{record['peak_memory_mib']:.0f} MiB",
                    flush=True,
                )


def load() -> list[dict]:
    latest = {}
    for line in RESULTS.read_text().splitlines():
        r = json.loads(line)
        m = r["model"]
        latest[(r["sweep"], m["n_layer"], m["n_embd"], m["block_size"], r["mixed_precision"])] = r  # last run wins
    return list(latest.values())


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = load()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    columns = [
        "sweep",
        "layers",
        "width",
        "context",
        "batch",
        "precision",
        "ms/step",
        "tokens/s",
        "MFLOP/token",
        "GFLOP/s",
        "peak_RSS_MiB",
    ]
    print("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for col, (sweep, (key, values)) in enumerate(SWEEPS.items()):
        for precision in PRECISIONS:
            rows = sorted(
                (r for r in records if r["sweep"] == sweep and r["mixed_precision"] == precision),
                key=lambda r: r["model"][key],
            )
            for r in rows:
                m = r["model"]
                print(
                    f"| {sweep} | {m['n_layer']} | {m['n_embd']} | {m['block_size']} | {r['batch_size']} | "
                    f"{'bf16' if precision == 'bf16' else 'fp32'} | {r['step_ms_median']:.1f} | "
                    f"{r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e6:.1f} | {1000 * r['tflops']:.0f} | "
                    f"{r['peak_memory_mib']:,.0f} |"
                )
            xs = [r["model"][key] for r in rows]
            label = "bf16 autocast" if precision == "bf16" else "fp32"
            axes[0, col].plot(xs, [r["step_ms_median"] for r in rows], marker="o", label=label)
            axes[1, col].plot(xs, [r["peak_memory_mib"] for r in rows], marker="o", label=label)
        name = {"n_embd": "width (n_embd)", "n_layer": "depth (n_layer)", "block_size": "context (block_size)"}[key]
        for row in (0, 1):
            axes[row, col].set_xlabel(name)
            axes[row, col].set_xscale("log", base=2)
            axes[row, col].set_xticks(values, [str(v) for v in values])
            axes[row, col].grid(True, alpha=0.3)
            axes[row, col].legend()
        axes[0, col].set_ylabel("median ms per step")
        axes[0, col].set_yscale("log")
        axes[1, col].set_ylabel("peak RSS (MiB)")
    fig.suptitle(
        f"Training step on {records[0]['device_name']} ({records[0]['threads']} threads), "
        f"{TOKENS_PER_STEP:,} tokens/step; base: 4 layers, 128 wide, context 256"
    )
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    print(f"\nwrote {PLOT.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="measure sweeps and append to docs/scaling_cpu.jsonl")
    p_run.add_argument("sweeps", nargs="+", choices=sorted(SWEEPS))
    p_run.add_argument("--steps", type=int, default=8, help="timed steps per point (default 8)")
    sub.add_parser("report", help="print the table and write docs/scaling_cpu.png")
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.sweeps, args.steps)
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
