"""How the GPT is sharded with FSDP: one unit per transformer block, then the root.

Under FSDP each unit's parameters are all-gathered just before the unit runs and freed after, so a
process holds the full weights of one block at a time plus its own shard of everything. The unit is
the ``Block`` class of ``gpt.model``; the root unit keeps what is left (token and position
embeddings, the final LayerNorm and the tied head, which must stay together with the embedding).

The trainer hands this policy to accelerate (``accelerate_plugin``), which applies it in
``accelerator.prepare`` when the launch config asks for FSDP. ``shard_model`` applies it with
``torch.distributed.fsdp.fully_shard`` directly, for code outside accelerate's FSDP path, which
accelerate opens to GPU processes only (the tests shard on CPU over gloo this way).

Mixed precision under FSDP is FSDP's own, not autocast: accelerate does not autocast an FSDP2 model
but casts the gathered weights to the compute dtype (``MixedPrecisionPolicy.param_dtype``), and by
default reduces and accumulates the gradients in that dtype too. ``set_mixed_precision`` keeps the
bf16/fp16 compute and moves the gradient reduce-scatter and accumulation to fp32, and leaves the
model's output uncast (the loss is computed from fp32 logits in the model).

Checkpoints of an FSDP run are sharded: ``accelerator.save_state`` writes the model and optimizer
with ``torch.distributed.checkpoint`` (one folder each, every process writing its shard), and the
trainer also gathers a full copy of the weights for the portable export that ``sample.py`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


def mixed_precision_policy(mixed_precision: str, fsdp_version: int = 2) -> Any:
    """FSDP's mixed precision for accelerate's ``mixed_precision`` ('no', 'bf16', 'fp16'): compute in
    that dtype, gradients reduced (and, over accumulation steps without a sync, summed) in fp32, the
    output not cast. None for 'no' (everything in fp32)."""
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    if compute is None:
        return None
    if fsdp_version == 1:
        from torch.distributed.fsdp import MixedPrecision

        return MixedPrecision(param_dtype=compute, reduce_dtype=torch.float32, buffer_dtype=compute)
    from torch.distributed.fsdp import MixedPrecisionPolicy  # FSDP2's (torch 2.6 and later)

    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32, output_dtype=None)


def set_mixed_precision(accelerator: Accelerator) -> None:
    """Before ``prepare``: replace the policy accelerate derived from its mixed precision (gradients
    reduced in bf16/fp16) by ``mixed_precision_policy``. Nothing to do without FSDP."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return  # (accelerate's state has no fsdp_plugin attribute at all then)
    plugin = accelerator.state.fsdp_plugin
    plugin.mixed_precision_policy = mixed_precision_policy(accelerator.mixed_precision, plugin.fsdp_version)


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
