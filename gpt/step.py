"""One optimizer step of the training loop over the next global batch, and the batches it reads.

The data is a pure function of (seed, step) (``gpt.data.BatchStream``), so a resumed run, or one
split differently over processes, sees the same batches at every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gpt.data import BatchStream
from gpt.optim import set_lr
from gpt.spike import SpikeGuard

if TYPE_CHECKING:
    from gpt.trainer import Run


def train_step(
    run: Run, batches: BatchStream, lr: float, guard: SpikeGuard | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at learning rate ``lr`` over the next global batch (run.accum micro-batches).

    Returns the sum of the micro-batch losses and the gradient norm before clipping as tensors:
    reading them waits for the device, so the loop does it only at log steps. With a spike guard
    (gpt.spike) they are read at every step, and a spike's update is dropped instead of applied.
    """
    accelerator, model, optimizer, t = run.accelerator, run.model, run.optimizer, run.cfg.train
    device = accelerator.device
    set_lr(optimizer, lr)
    step_loss = torch.zeros((), device=device)
    for x, y in batches.next_step():
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with accelerator.accumulate(model):
            _, loss = model(x, y)
            accelerator.backward(loss)
            step_loss += loss.detach()
            apply = True
            if accelerator.sync_gradients:
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                if guard is not None:
                    apply = not spike_skipped(run, guard, step_loss, grad_norm)
            if apply:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def spike_skipped(run: Run, guard: SpikeGuard, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether the guard drops this step's update; every process reads the same reduced values."""
    accelerator = run.accelerator
    loss = accelerator.reduce(step_loss / run.accum, reduction="mean").item()
    reason = guard.spike(loss, float(grad_norm))
    if reason and accelerator.is_main_process:
        print(f"skipped an update (spike guard): {reason}", flush=True)
    return reason is not None


def batch_stream(run: Run, start_step: int) -> BatchStream:
    """This process's micro-batches from ``start_step`` on, made ahead on a background thread."""
    cfg, accelerator = run.cfg, run.accelerator
    return BatchStream(
        run.train_data, seed=cfg.seed, block_size=cfg.model.block_size, batch_size=cfg.train.batch_size,
        micro_batch_size=run.micro_batch_size, rank=accelerator.process_index, world=accelerator.num_processes,
        start_step=start_step, pin_memory=accelerator.device.type == "cuda", mixture=run.mixture,
    )  # fmt: skip
