"""The ``accelerate.Accelerator`` a training run uses, and the device settings around it.

One place decides the processes (several and no GPU: CPU over gloo), the mixed precision (bf16 on a
CPU without native bf16 falls back to fp32, see ``gpt.cpu``), FSDP, the collective timeout, the
matmul precision and the CPU threads, and refuses the combinations that cannot run, each in one line.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, GradientAccumulationPlugin, InitProcessGroupKwargs, ProjectConfiguration

from gpt import cpu, fsdp, perf
from gpt.config import TrainConfig
from gpt.errors import UserError


def build_accelerator(
    t: TrainConfig, out_dir: str, log_with: list[str] | None, logging_dir: str, width: int
) -> Accelerator:
    """The Accelerator of a training run, its device set up; ``log_with``: accelerate's trackers (may be
    empty), writing under ``logging_dir`` where they take it; ``width``: the model's, for the CPU's bf16
    probe (gpt.cpu)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    precision, precision_note = cpu.training_precision(t.mixed_precision, t.cpu_bf16, on_cpu, width)  # or fp32
    accelerator = Accelerator(
        # Several processes and no GPU: run them on CPU over gloo (accelerate's multi-process
        # launcher does not pass use_cpu from a config file on to the processes).
        cpu=launched > 1 and not torch.cuda.is_available(),
        mixed_precision=precision,  # None: the launch's
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=out_dir, logging_dir=logging_dir, automatic_checkpoint_naming=False
        ),
        dynamo_backend="inductor" if t.compile else "no",
        step_scheduler_with_optimizer=False,
        fsdp_plugin=fsdp.accelerate_plugin(t.activation_checkpointing) if fsdp.fsdp_requested() else None,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.collective_timeout_s))],
    )
    if precision_note and accelerator.is_main_process:
        print(precision_note, flush=True)
    if accelerator.num_processes != launched:
        raise UserError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}")
    device = accelerator.device
    if accelerator.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError(
            "mixed precision fp16 (from train.mixed_precision or the launch) needs a CUDA GPU; on CPU use bf16 or no"
        )
    fsdp.check_fsdp_runs(accelerator)
    fsdp.set_mixed_precision(accelerator)  # FSDP: bf16/fp16 compute, fp32 gradient reduction
    if accelerator.distributed_type == DistributedType.FSDP and t.optimizer == "muon":
        # Muon orthogonalises whole matrices; FSDP hands each process a shard of every matrix
        raise UserError("train.optimizer=muon does not work with FSDP (sharded matrices); use adamw or DDP")
    perf.set_matmul_precision(t.matmul_precision, device)  # 'auto': TF32 tensor cores on CUDA, full fp32 on CPU
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        torch.set_num_threads(cpu.cpu_threads(t.cpu_threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    return accelerator
