"""A wall-clock budget for a training run (``train.time_budget_s``).

The clock starts when the training process starts, so interpreter start-up, imports, data preparation
and model building all count: a run with a budget of S seconds stops its last optimizer step about S
seconds after it was launched (the final evaluation and checkpoint come after). A resumed run adds the
time its checkpoint had already spent.

Processes must agree on the learning rate and on when to stop, so they all use the main process's
clock: with several processes it is broadcast every ``SYNC_EVERY`` steps (one small collective), and
with one process it is read after every step.
"""

from __future__ import annotations

import time

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast

SYNC_EVERY = 10


class TimeBudget:
    """Share of the budget spent so far, the same on every process; ``fraction`` is None without a budget."""

    def __init__(self, accelerator: Accelerator, seconds: float, spent_before: float = 0.0):
        self.accelerator = accelerator
        self.seconds = seconds
        self.spent_before = spent_before
        self.process_start = psutil.Process().create_time()  # seconds since the epoch, like time.time()
        self.fraction: float | None = None
        if seconds > 0:
            self.fraction = self._share()

    def elapsed(self) -> float:
        """Seconds this run has used: earlier attempts (from the checkpoint) plus this process so far."""
        return self.spent_before + time.time() - self.process_start

    def _share(self) -> float:
        share = self.elapsed() / self.seconds
        if self.accelerator.num_processes > 1:
            value = torch.tensor([share], dtype=torch.float64, device=self.accelerator.device)
            share = broadcast(value, from_process=0).item()
        return share

    def tick(self, step: int) -> None:
        """Read the clock after optimizer step ``step`` (every SYNC_EVERY steps with several processes)."""
        if self.seconds > 0 and (self.accelerator.num_processes == 1 or step % SYNC_EVERY == 0):
            self.fraction = self._share()

    @property
    def spent(self) -> bool:
        return self.fraction is not None and self.fraction >= 1.0
