"""Checkpoint save and load time and size, through the trainer's own save and restore.

    python bench/checkpoint.py                       # the default model
    python bench/checkpoint.py --model gpt2          # GPT-2 124M (12 x 768, context 1024, BPE)

Builds the run as train.py would, takes a few optimizer steps (so AdamW has its state), then saves
and restores the checkpoint --repeat times and prints the medians, the checkpoint's size, the
median training step time, and the fraction of training time spent saving at the default
checkpoint interval. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gpt import checkpoint, resume, trainer
from gpt.config import load_config
from gpt.data import BatchStream

MODELS = {
    "default": [],
    "gpt2": ["data.dataset=shakespeare_gpt2", "model.n_layer=12", "model.n_head=12", "model.n_embd=768",
             "model.block_size=1024", "train.batch_size=1", "train.micro_batch_size=1"],
}  # fmt: skip


def folder_bytes(folder: Path) -> int:
    """Bytes on disk, counting hard-linked files (the export's weights) once."""
    files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return sum(files.values())


def one_step(run: trainer.Run, step: int) -> float:
    """One optimizer step of the training loop's shape; returns its seconds."""
    cfg, accelerator = run.cfg, run.accelerator
    start = time.perf_counter()
    batches = BatchStream(
        run.train_data, seed=cfg.seed, block_size=cfg.model.block_size, batch_size=cfg.train.batch_size,
        micro_batch_size=run.micro_batch_size, rank=0, world=1, start_step=step,
    )  # fmt: skip
    for x, y in batches.next_step():
        with accelerator.accumulate(run.model):
            _, loss = run.model(x, y)
            accelerator.backward(loss)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
    batches.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="default")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="training steps to time (after one warm-up)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-"))
    cfg = load_config([*MODELS[args.model], f"out_dir={work / 'run'}", "wandb.mode=disabled", "resume=false",
                       "train.keep_last=1"])  # fmt: skip
    run = trainer.setup(cfg)
    one_step(run, 0)  # warm-up, and AdamW state exists from here on
    step_s = statistics.median(one_step(run, i + 1) for i in range(args.steps))

    saves, loads, size = [], [], 0
    for i in range(args.repeat):
        start = time.perf_counter()
        folder = resume.save(run, 100 + i, None, {})
        saves.append(time.perf_counter() - start)
        size = folder_bytes(folder)
        start = time.perf_counter()
        checkpoint.verify(folder)  # what a resume does first (on the main process)
        resume.restore(run.accelerator, folder, run.cfg, run.tokenizer)
        loads.append(time.perf_counter() - start)
    shutil.rmtree(work)

    n_params = sum(p.numel() for p in run.model.parameters())
    save_s, load_s = statistics.median(saves), statistics.median(loads)
    interval = cfg.train.checkpoint_interval
    fraction = save_s / (save_s + interval * step_s)
    record = {
        "bench": "checkpoint", "model": args.model, "params": n_params, "threads": torch.get_num_threads(),
        "save_s_median": round(save_s, 3), "load_s_median": round(load_s, 3), "checkpoint_mb": round(size / 2**20, 1),
        "step_s_median": round(step_s, 4), "checkpoint_interval": interval, "save_fraction": round(fraction, 5),
    }  # fmt: skip
    print(f"{args.model}: {n_params:,} parameters; checkpoint {record['checkpoint_mb']} MiB "
          f"(weights, AdamW state, RNG, export hard-linked); save {save_s:.3f} s, load {load_s:.3f} s "
          f"(medians of {args.repeat}); step {step_s * 1000:.1f} ms; saving every {interval} steps costs "
          f"{100 * fraction:.2f}% of training time")  # fmt: skip
    print(json.dumps(record))


if __name__ == "__main__":
    main()
