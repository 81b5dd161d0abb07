"""Activation checkpointing (``train.activation_checkpointing``): every transformer block keeps only its
input for backward and recomputes the rest of its activations there.

A block's forward saves about a dozen (B, T, C)-sized tensors for backward (more with the 4C-wide MLP
and explicit attention); checkpointed, it saves one, its input, and runs its forward once more in
backward (about a third more compute). The loss and gradients are the same: the recomputation replays
the random state, so dropout draws the same masks.

One route per kind of run, both ending in torch's ``checkpoint_wrapper`` around each ``Block`` with
non-reentrant ``torch.utils.checkpoint`` (the wrapper keeps parameter names in state dicts unchanged,
so checkpoints and exports load with or without it):

- FSDP: accelerate's own switch, ``FullyShardedDataParallelPlugin(activation_checkpointing=True)`` (set
  by ``gpt.fsdp.accelerate_plugin``, or ``fsdp_activation_checkpointing: true`` in a launch config).
  accelerate wraps the blocks, its FSDP units, before ``fully_shard`` and before ``torch.compile``.
  It does not replay the random state, so with dropout it is refused (``apply``).
- everything else (one process or DDP, compiled or not): ``wrap_blocks`` before ``accelerator.prepare``,
  so that DDP and ``torch.compile`` wrap the checkpointed model, as accelerate does under FSDP.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gpt.errors import UserError
from gpt.model import Block


def wrap_blocks(model: torch.nn.Module) -> torch.nn.Module:
    """Checkpoint every ``Block`` of the model in place (torch's wrapper, non-reentrant); returns the model."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, Block):
            model.set_submodule(name, checkpoint_wrapper(module, checkpoint_impl=CheckpointImpl.NO_REENTRANT))
    return model


def apply(accelerator: Accelerator, model: torch.nn.Module, enabled: bool, dropout: float) -> None:
    """Set up activation checkpointing for this run; call before ``accelerator.prepare``. Under FSDP
    accelerate applies it in ``prepare`` (see the module doc); otherwise the blocks are wrapped here."""
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp and accelerator.state.fsdp_plugin.activation_checkpointing and dropout > 0:
        raise UserError(
            "activation checkpointing under FSDP (accelerate's) recomputes blocks without replaying dropout's "
            f"random masks, so gradients would be wrong with model.dropout={dropout}; set model.dropout=0, or "
            "run without FSDP (the trainer's own checkpointing replays them)"
        )
    if enabled and not fsdp:
        wrap_blocks(model)
