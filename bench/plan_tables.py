"""The planner's tables in docs/benchmarks.md: python -m gpt.plan for each preset and topology, as a table.

python bench/plan_tables.py            # prints the markdown tables (no GPU needed)
"""

from __future__ import annotations

import json
import subprocess
import sys

RUNS = [  # (preset, GPU kind, numbers of GPUs as (nodes, GPUs per node))
    ("shakespeare_char", "a100-40gb", [(1, 1), (1, 8), (2, 8), (4, 8)]),
    ("gpt2_124m_fineweb", "h100-80gb", [(1, 8), (2, 8), (8, 8)]),
    ("gpt2_124m_fineweb", "a100-40gb", [(1, 1)]),
]


def plan(preset: str, gpu: str, nodes: int, gpus: int) -> tuple[str, dict]:
    args = [preset, "--gpus", str(gpus), "--nodes", str(nodes), "--gpu", gpu]
    r = subprocess.run([sys.executable, "-m", "gpt.plan", *args], capture_output=True, text=True)
    return "python -m gpt.plan " + " ".join(args), json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    for preset, gpu, topologies in RUNS:
        rows = [plan(preset, gpu, nodes, gpus) for nodes, gpus in topologies]
        print(f"**{preset} on {gpu}** (bf16, DDP, step time at 40% MFU)\n")
        print(
            "| GPUs | micro batch x accumulation | tokens/step | weights + grads + AdamW | activations "
            "(blocks + logits/loss) | total / GPU memory | ms/step | tokens/day |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for _, r in rows:
            p = r["memory_parts_gib"]
            state = p["weights"] + p["gradients"] + p["optimizer"]
            acts = p["blocks"] + p["other_activations"] + p["logits_loss"]
            print(
                f"| {r['world_size']} | {r['micro_batch_size']} x {r['accumulation_steps']} | "
                f"{r['tokens_per_step']:,} | {state:.2f} GiB | {acts:.2f} GiB ({p['blocks']:.2f} + "
                f"{p['logits_loss']:.2f}) | {r['memory_gib']:.2f} / {r['device_memory_gib']:g} GiB | "
                f"{r['step_ms']:,.1f} | {r['tokens_per_day'] / 1e9:,.1f}B |"
            )
        print("\n" + "\n".join(f"    {cmd}" for cmd, _ in rows) + "\n")


if __name__ == "__main__":
    main()
