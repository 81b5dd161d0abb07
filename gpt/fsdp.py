"""How the GPT is sharded with FSDP: one unit per transformer block, then the root.

Under FSDP each unit's parameters are all-gathered just before the unit runs and freed after, so a
process holds the full weights of one block at a time plus its own shard of everything. The unit is
the ``Block`` class of ``gpt.model``; the root unit keeps what is left (token and position
embeddings, the final LayerNorm and the tied head, which must stay together with the embedding).

The trainer hands this policy to accelerate (``accelerate_plugin``), which applies it in
``accelerator.prepare`` when the launch config asks for FSDP. ``shard_model`` applies it with
``torch.distributed.fsdp.fully_shard`` directly, for code outside accelerate's FSDP path, which
accelerate opens to GPU processes only (the tests shard on CPU over gloo this way).

Checkpoints of an FSDP run are sharded: ``accelerator.save_state`` writes the model and optimizer
with ``torch.distributed.checkpoint`` (one folder each, every process writing its shard), and the
trainer also gathers a full copy of the weights for the portable export that ``sample.py`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from gpt.errors import UserError
from gpt.model import Block

SHARDED_UNIT = Block  # the module class that becomes one FSDP unit
SHARDED_MODEL_DIR = "pytorch_model_fsdp_0"  # where accelerate's save_state puts the model shards


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (``distributed_type: FSDP`` in the accelerate config,
    or ``--use_fsdp``): accelerate's launcher passes that on as ACCELERATE_USE_FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def accelerate_plugin(activation_checkpointing: bool = False) -> FullyShardedDataParallelPlugin:
    """accelerate's FSDP settings with our wrapping policy and sharded checkpoints fixed; the FSDP
    version, resharding, offloading and precision come from the launch config. activation_checkpointing
    turns on accelerate's (every unit recomputed in backward); False leaves it to the launch config."""
    return FullyShardedDataParallelPlugin(
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[SHARDED_UNIT.__name__],
        state_dict_type="SHARDED_STATE_DICT",
        activation_checkpointing=True if activation_checkpointing else None,  # None: the launch's setting
    )


def check_fsdp_runs(accelerator: Accelerator) -> None:
    """Refuse a launch that asked for FSDP but did not get it: accelerate sets FSDP up only for
    several GPU processes and otherwise falls back, silently, to DDP or a single process."""
    if fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        raise UserError(
            f"the launch asked for FSDP but accelerate set up {accelerator.distributed_type.value} with "
            f"{accelerator.num_processes} process(es) on {accelerator.device.type}: FSDP runs only on several GPUs; "
            "without GPUs launch with launch/cpu_multiprocess.yaml (DDP over gloo)"
        )


def check_checkpoint_fits(folder: Path, fsdp_run: bool) -> None:
    """Refuse to resume a sharded (FSDP) checkpoint without FSDP, or a DDP/single-process one with
    FSDP: the optimizer state is stored differently and accelerate cannot read one as the other."""
    sharded = (folder / SHARDED_MODEL_DIR).is_dir()
    if sharded and not fsdp_run:
        raise UserError(
            f"cannot resume from {folder}: it was saved by an FSDP run; resume it with an FSDP launch "
            f"(launch/fsdp.yaml), or start a new out_dir (the trained weights are in {folder / 'model'})"
        )
    if fsdp_run and not sharded:
        raise UserError(
            f"cannot resume from {folder} with FSDP: it was saved without FSDP; resume it with the kind of "
            "launch that made it, or start a new out_dir"
        )


def shard_model(model: torch.nn.Module, **fully_shard_kwargs) -> torch.nn.Module:
    """Apply FSDP2 in place with this policy: ``fully_shard`` every ``Block``, then the root.
    Keyword arguments (mesh, mp_policy, ...) go to ``fully_shard``. (accelerate's FSDP2 prepare makes
    the same Block units and, in accelerate 1.15, also gives the final LayerNorm a unit of its own.)"""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, SHARDED_UNIT):
            fully_shard(module, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model
