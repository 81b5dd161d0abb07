"""Throughput of 1 and 2 CPU processes on the default model, and the cost of accelerate's accumulate path.

    flock -x /tmp/cpu.lock python bench/distributed.py            # about 4 minutes on 2 cores

1. Scaling. ``train.py`` with the default model and batch (no model overrides) for ``--steps`` steps,
   run three ways over the same global batch of 32 sequences: one process with torch's default
   threads (one per core), one process with one thread, and two processes with one thread each
   (``accelerate launch --config_file launch/cpu_multiprocess.yaml``, micro batch 16, so one
   accumulation step each). Throughput is the median of the trainer's own ``tokens_per_s`` records
   (one per ``log_interval`` steps, evaluation and checkpoint time excluded), leaving out the first.
   Scaling efficiency = tokens/s of 2 processes / (2 x tokens/s of 1 process with 1 thread).

2. Accumulate overhead. In one process, the training step as ``gpt/step.py`` runs it at
   accumulation 1 (``accelerator.accumulate``, ``accelerator.backward``, ``accelerator.clip_grad_norm_``,
   optimizer step inside the context) against a plain PyTorch step (``loss.backward()``,
   ``torch.nn.utils.clip_grad_norm_``), on the default model and real batches. Trials of each
   alternate, so both see the same machine load; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_run(name: str, steps: int, log_interval: int, work: Path, processes: int, threads: int | None) -> dict:
    """Run train.py; return the median tokens/s (first log interval left out) and the final loss."""
    out = work / name
    args = [
        f"out_dir={out}", f"train.max_steps={steps}", f"train.log_interval={log_interval}",
        f"train.eval_interval={steps}", f"train.checkpoint_interval={steps}", "wandb.mode=disabled",
        f"data.root={work / 'data'}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["WANDB_MODE"] = "disabled"
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if processes == 1:
        cmd = [sys.executable, str(ROOT / "train.py"), *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "launch" / "cpu_multiprocess.yaml"), "--num_processes", str(processes),
               "--main_process_port", str(free_port()), str(ROOT / "train.py"), *args,
               f"train.micro_batch_size={32 // processes}"]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    if r.returncode != 0:
        sys.exit(f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [m["tokens_per_s"] for m in records if "tokens_per_s" in m][1:]
    header = next(line for line in r.stdout.splitlines() if "process(es)" in line)
    return {
        "tokens_per_s": statistics.median(rates),
        "spread": (min(rates), max(rates)),
        "final_loss": [m["train/loss"] for m in records if "train/loss" in m][-1],
        "setup": header,
    }


def scaling(steps: int, work: Path) -> None:
    log_interval = max(1, steps // 6)
    runs = {
        "1 process, 2 threads": train_run("p1t2", steps, log_interval, work, 1, None),
        "1 process, 1 thread": train_run("p1t1", steps, log_interval, work, 1, 1),
        "2 processes, 1 thread each": train_run("p2t1", steps, log_interval, work, 2, 1),
    }
    print(f"\n## Scaling: default model, {steps} steps, global batch 32 x 64 tokens\n")
    print("| run | tokens/s (median) | min - max | final train loss |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in runs.items():
        lo, hi = r["spread"]
        print(f"| {name} | {r['tokens_per_s']:,.0f} | {lo:,.0f} - {hi:,.0f} | {r['final_loss']:.4f} |")
    one, two = runs["1 process, 1 thread"]["tokens_per_s"], runs["2 processes, 1 thread each"]["tokens_per_s"]
    default = runs["1 process, 2 threads"]["tokens_per_s"]
    print(f"\nscaling efficiency, 2 processes vs 2 x (1 process, 1 thread): {two / (2 * one):.2f}")
    print(f"2 processes vs 1 process with 2 threads: {two / default:.2f}x")
    for name, r in runs.items():
        print(f"{name}: {r['setup']}")


def accumulate_overhead(trials: int, steps_per_trial: int, work: Path) -> None:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    from gpt.config import ModelConfig, TrainConfig
    from gpt.data import BatchStream, TokenStream, split_files
    from gpt.model import build_model
    from gpt.optim import build_optimizer
    from gpt.prepared import ensure_dataset
    from gpt.tokenizer import load_tokenizer

    folder = ensure_dataset(str(work / "data"), "shakespeare_char")
    cfg, t = ModelConfig(), TrainConfig(micro_batch_size=32)  # the default batch of 32 in one pass
    cfg.vocab_size = load_tokenizer(folder / "tokenizer.json").vocab_size
    accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1))
    batches = BatchStream(
        TokenStream(split_files(folder, "train")), seed=0, block_size=cfg.block_size, batch_size=t.batch_size,
        micro_batch_size=t.micro_batch_size, rank=0, world=1, start_step=0,
    )  # fmt: skip

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model(cfg)
        return model, build_optimizer(model, t, torch.device("cpu"))

    model_a, opt_a = fresh()
    model_a, opt_a = accelerator.prepare(model_a, opt_a)
    model_p, opt_p = fresh()

    def accumulate_step(x: torch.Tensor, y: torch.Tensor) -> None:  # as in gpt/step.py
        with accelerator.accumulate(model_a):
            _, loss = model_a(x, y)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model_a.parameters(), t.grad_clip)
            opt_a.step()
            opt_a.zero_grad(set_to_none=True)

    def plain_step(x: torch.Tensor, y: torch.Tensor) -> None:
        _, loss = model_p(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model_p.parameters(), t.grad_clip)
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)

    def trial(step_fn) -> float:
        data = [list(batches.next_step())[0] for _ in range(steps_per_trial)]
        start = time.perf_counter()
        for x, y in data:
            step_fn(x, y)
        return 1000 * (time.perf_counter() - start) / steps_per_trial

    trial(accumulate_step), trial(plain_step)  # warm-up
    times: dict[str, list[float]] = {"accumulate": [], "plain": []}
    for _ in range(trials):
        times["accumulate"].append(trial(accumulate_step))
        times["plain"].append(trial(plain_step))
    batches.close()
    acc, plain = statistics.median(times["accumulate"]), statistics.median(times["plain"])
    print(f"\n## Accumulate path vs plain loop: default model, accumulation 1, {trials} x {steps_per_trial} steps\n")
    print("| loop | ms/step (median) | min - max |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} - {max(values):.1f} |")
    print(f"\naccumulate / plain: {acc / plain:.3f}; threads: {torch.get_num_threads()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per scaling run")
    parser.add_argument("--trials", type=int, default=7, help="alternating trials per loop in the overhead test")
    parser.add_argument("--trial_steps", type=int, default=20, help="steps per trial in the overhead test")
    parser.add_argument("--skip_scaling", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_scaling:
            scaling(args.steps, work)
        accumulate_overhead(args.trials, args.trial_steps, work)


if __name__ == "__main__":
    main()
