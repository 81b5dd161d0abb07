"""The learning-rate schedule: a pure function of the step (or of a time budget's progress).

    cosine    warm up, then cosine decay to min_lr over the rest of the run (the default)
    linear    warm up, then straight down to min_lr
    constant  warm up, then hold learning_rate to the end
    wsd       warm up, hold learning_rate (stable), then decay to min_lr over the last decay_fraction
              of the run (warmup-stable-decay, or trapezoid: nanochat, modded-nanogpt, torchtitan, llm.c)

Because the rate depends only on the step and ``train.max_steps`` (or on the share of
``train.time_budget_s`` spent), a resumed run continues the same curve, and a WSD run checkpointed
in its stable phase can be continued for longer: resume it with a larger ``train.max_steps`` and
the decay moves to the new end. The rate a run stops at is written in the log.
"""

from __future__ import annotations

import math

from gpt.config import TrainConfig


def decay_multiplier(schedule: str, progress: float, decay_fraction: float, decay_shape: str) -> float:
    """How far the rate still is from min_lr (1: at learning_rate, 0: at min_lr) at ``progress`` in [0, 1]
    of the post-warm-up run."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant":
        return 1.0
    stable = 1.0 - decay_fraction  # wsd: hold, then decay over the last decay_fraction
    if progress <= stable:
        return 1.0
    into = (progress - stable) / decay_fraction  # 0 -> 1 over the decay
    if decay_shape == "linear":
        return 1.0 - into
    if decay_shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * into))
    return 1.0 - math.sqrt(into)  # sqrt: fast at first, then slow (the "1 - sqrt" cooldown)


def lr_at(step: int, t: TrainConfig, progress: float | None = None) -> float:
    """The learning rate of optimizer step ``step`` (from 0) under TrainConfig ``t``.

    Linear warm-up to learning_rate over warmup_steps, then the schedule; ``progress`` (the share of a
    time budget spent, see gpt.budget) replaces the step count after warm-up when given.
    """
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    if progress is None:
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, progress)
    if t.schedule == "cosine":  # written out so the default run's rates are bitwise those it always had
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.learning_rate - t.min_lr)
    return t.min_lr + decay_multiplier(t.schedule, progress, t.decay_fraction, t.decay_shape) * (
        t.learning_rate - t.min_lr
    )
