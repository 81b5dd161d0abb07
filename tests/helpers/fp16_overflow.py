"""fp16 on a GPU: the trainer's step skips the optimizer step whose scaled gradients overflow.

    python tests/helpers/fp16_overflow.py OUT key=value ...

Sets up the trainer (``gpt.trainer.setup``) in fp16, runs one ordinary step, then forces the
gradient scaler's scale so high that the scaled gradients overflow, runs a step, then an ordinary
scale again; writes OUT/report.json with what each step did to the weights, the optimizer's step
count and the scale.
"""

import json
import sys
from pathlib import Path

import torch

from gpt.config import load_config
from gpt.trainer import batch_stream, setup, train_step


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def main(out: Path, overrides: list[str]) -> None:
    run = setup(load_config(overrides))
    accelerator, optimizer = run.accelerator, run.optimizer
    scaler = accelerator.scaler
    batches = batch_stream(run, 0)
    report = {"scaler": type(scaler).__name__ if scaler is not None else None, "steps": []}

    def step(scale: float) -> None:
        scaler.update(new_scale=scale)  # the scale this step's loss is multiplied by
        before, steps_before = snapshot(run.model), optimizer_steps(optimizer)
        loss, _ = train_step(run, batches, lr=1e-3)
        after = snapshot(run.model)
        report["steps"].append(
            {
                "scale": scale,
                "loss": loss.item(),
                "skipped": accelerator.optimizer_step_was_skipped,
                "weights_changed": any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)),
                "optimizer_steps": [steps_before, optimizer_steps(optimizer)],
                "scale_after": scaler.get_scale(),
            }
        )

    train_step(run, batches, lr=1e-3)  # the scaler's state exists after its first step
    step(2.0**40)  # fp16 gradients of a loss scaled by 2^40 are inf
    step(2.0**10)
    batches.close()
    (out / "report.json").write_text(json.dumps(report, indent=1))


def optimizer_steps(optimizer: torch.optim.Optimizer) -> float:
    """AdamW's step count (of its first parameter with state)."""
    state = next(iter(optimizer.state_dict()["state"].values()))
    return float(state["step"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
