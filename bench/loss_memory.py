"""Peak memory of one bf16 training step with GPT-2's vocabulary, the loss in one piece or in chunks.

    python bench/loss_memory.py                            # this code: one piece, chunked, + checkpointing
    python bench/loss_memory.py --code /tmp/old_checkout   # and the same step with another checkout's gpt/

Each variant runs in a fresh process: a small GPT with the GPT-2 vocabulary (50,257 padded to 50,304),
wrapped by accelerate for bf16 autocast on CPU (``Accelerator.prepare_model``, the trainer's path, whose
output conversion turned returned logits into a float32 copy), then one forward and backward pass on
``--batch`` x ``--block`` tokens; the last variant also checkpoints every block's activations
(``train.activation_checkpointing``). The figure is the process's peak resident memory (``ru_maxrss``)
minus its resident memory just before the step: what the step itself needed on top of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def one_step(args: argparse.Namespace) -> dict:
    """Runs in the child process: build, one training step, report memory."""
    import torch
    from accelerate import Accelerator

    from gpt.config import ModelConfig
    from gpt.model import GPT

    torch.manual_seed(0)
    extra = {} if args.loss_chunk is None else {"loss_chunk": args.loss_chunk}
    cfg = ModelConfig(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block,
        vocab_size=50257, pad_vocab_to=64, **extra,
    )  # fmt: skip
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = GPT(cfg)
    if args.activation_checkpointing:
        from gpt.activation_checkpointing import wrap_blocks

        wrap_blocks(model)
    model = accelerator.prepare_model(model)
    x, y = torch.randint(0, 50257, (2, args.batch, args.block))
    before = rss_gib()
    logits, loss = model(x, y)
    accelerator.backward(loss)
    return {
        "code": str(Path(__import__("gpt").__file__).parent.parent),
        "loss_chunk": args.loss_chunk,
        "activation_checkpointing": args.activation_checkpointing,
        "returns_logits": logits is not None,
        "loss": loss.item(),
        "rss_before_step_gib": round(before, 3),
        "peak_rss_gib": round(peak_rss_gib(), 3),
        "step_peak_gib": round(peak_rss_gib() - before, 3),
    }


def run_child(args: argparse.Namespace, code: Path, loss_chunk: int | None, checkpointing: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--block", str(args.block)]
    cmd += ["--n_layer", str(args.n_layer), "--n_head", str(args.n_head), "--n_embd", str(args.n_embd)]
    if loss_chunk is not None:
        cmd += ["--loss_chunk", str(loss_chunk)]
    if checkpointing:
        cmd.append("--activation_checkpointing")
    env = dict(os.environ, PYTHONPATH=str(code))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--loss_chunk", type=int, default=None, help="(child) model.loss_chunk; none: the default")
    p.add_argument("--activation_checkpointing", action="store_true", help="(child) checkpoint every block")
    p.add_argument("--code", type=Path, default=None, help="another checkout to compare with (its default path)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_step(args)))
        return
    results = []
    if args.code is not None:
        results.append(run_child(args, args.code.resolve(), None))
    results.append(run_child(args, ROOT, -1))  # this code, the loss in one piece
    results.append(run_child(args, ROOT, None))  # this code, the default (chunked for this vocabulary)
    results.append(run_child(args, ROOT, None, checkpointing=True))  # and train.activation_checkpointing
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
