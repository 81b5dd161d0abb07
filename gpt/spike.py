"""The loss-spike guard: skip an update whose loss or gradient norm jumps far above the recent ones.

A bad batch or a numerical accident now and then sends one step's loss or gradient norm far above
its neighbours; applying that update can set a run back by thousands of steps or end it. llm.c skips
such updates. With ``train.spike_loss_ratio`` (or ``train.spike_grad_ratio``) set to k, a step whose
loss (or gradient norm before clipping) is more than k times the median of the last
``train.spike_window`` accepted steps is not applied: its gradients are dropped, the weights and the
optimizer state stay as they were, and training moves on to the next step's batch (the sample stream
does not repeat or skip data). The guard acts once it has a full window.

Every process takes the same decision: the loss is the mean over all processes and the gradient
norm is the global one. Reading them costs one synchronisation per step, so the guard is off by
default. Skipped steps are counted (``spike_skipped_steps`` in the log and metrics.jsonl) and the guard's
window and count are saved in checkpoints, so a resumed run guards the same way.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

from gpt.config import TrainConfig
from gpt.errors import UserError


class SpikeGuard:
    """Decides, step by step, whether an update is a spike to skip."""

    def __init__(self, loss_ratio: float, grad_ratio: float, window: int, state: dict[str, Any] | None = None):
        self.loss_ratio, self.grad_ratio = loss_ratio, grad_ratio
        state = state or {}
        self.losses: deque[float] = deque(state.get("losses", []), maxlen=window)
        self.grad_norms: deque[float] = deque(state.get("grad_norms", []), maxlen=window)
        self.skipped = int(state.get("skipped", 0))

    @property
    def enabled(self) -> bool:
        return self.loss_ratio > 0 or self.grad_ratio > 0

    def spike(self, loss: float, grad_norm: float) -> str | None:
        """Why this step is a spike to skip, or None (then its values join the window)."""
        reason = None
        if len(self.losses) == self.losses.maxlen:
            reason = self._above("loss", loss, self.losses, self.loss_ratio) or self._above(
                "gradient norm", grad_norm, self.grad_norms, self.grad_ratio
            )
        if reason:
            self.skipped += 1
            return reason
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        return None

    @staticmethod
    def _above(name: str, value: float, window: deque[float], ratio: float) -> str | None:
        if ratio <= 0:
            return None
        median = statistics.median(window)
        if value > ratio * median or value != value:  # a NaN is always a spike
            return f"{name} {value:.4g} > {ratio:g} x the median {median:.4g} of the last {len(window)} steps"
        return None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps, to resume the same guard."""
        return {"losses": list(self.losses), "grad_norms": list(self.grad_norms), "skipped": self.skipped}


def spike_guard(t: TrainConfig, mixed_precision: str, state: dict[str, Any] | None) -> SpikeGuard | None:
    """The guard train.spike_* asks for (None when off), continuing a checkpoint's window and count."""
    guard = SpikeGuard(t.spike_loss_ratio, t.spike_grad_ratio, t.spike_window, state)
    if not guard.enabled:
        return None
    if mixed_precision == "fp16":  # a skipped step would leave the gradient scaler mid-step
        raise UserError("the spike guard (train.spike_*) does not work with fp16; use bf16, or turn the guard off")
    return guard
