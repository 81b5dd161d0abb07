"""One clear line, before anything is allocated, for a model too large to train on this machine
(a typo such as ``model.n_embd=76800`` would otherwise end in the allocator's traceback)."""

from __future__ import annotations

import psutil
import torch

from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.model import build_model

# Training in float32 with AdamW: the weights, their gradients and the optimizer's two moments.
TRAINING_BYTES_PER_PARAM = 16
GIB = 2**30


def parameter_count(cfg: ModelConfig) -> int:
    """Every parameter of the model, counted on the meta device (no memory allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(cfg).parameters())


def check_model_fits(cfg: ModelConfig, device: torch.device, local_processes: int, sharded: bool) -> None:
    """Refuse a model whose training state cannot fit: on the host, where every process of this
    machine first builds it in float32, and on the device (unless sharded over processes by FSDP,
    where each process holds a share). Activations come on top, so passing is no promise."""
    n = parameter_count(cfg)
    if device.type == "cpu":
        host = (TRAINING_BYTES_PER_PARAM * n * local_processes, "its weights, gradients and AdamW's moments")
    else:
        host = (4 * n * local_processes, "its float32 weights, built on the host by each local process")
    needs = [(*host, psutil.virtual_memory().available, "this machine")]
    if device.type == "cuda" and not sharded:
        training = "its weights, gradients and AdamW's moments"
        needs.append((TRAINING_BYTES_PER_PARAM * n, training, torch.cuda.mem_get_info(device)[0], str(device)))
    for need, what, free, where in needs:
        if need > free:
            raise UserError(
                f"the model has {n:,} parameters and {what} need {need / GIB:,.1f} GiB, more than the "
                f"{free / GIB:,.1f} GiB free on {where}; make it smaller (model.n_layer, model.n_embd)"
            )
