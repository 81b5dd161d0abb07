"""The dtypes of an FSDP2 bf16 step with the trainer's policy, on CPU over gloo.

    accelerate launch --config_file launch/cpu_multiprocess.yaml tests/helpers/fsdp_precision.py OUT

Every process shards a small GPT with ``gpt.fsdp.shard_model`` and the policy the trainer gives
accelerate (``gpt.fsdp.mixed_precision_policy("bf16")``), runs one optimizer step of two
micro-batches the way accelerate accumulates under FSDP2 (no gradient sync on the first), and
records the dtype of the loss, of every reduce-scatter output (through FSDP's public reduce hook),
and of the sharded gradients. The main process writes OUT/report.json.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.distributed.fsdp import FSDPModule

from gpt.config import ModelConfig
from gpt.fsdp import mixed_precision_policy, shard_model
from gpt.model import build_model


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)  # the gloo process group; the sharding below is torch's own
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    model = shard_model(build_model(cfg), mp_policy=mixed_precision_policy("bf16"))
    reduced: list[str] = []
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_all_reduce_hook(lambda grad: reduced.append(str(grad.dtype)))

    compute: list[str] = []  # what a Block computes in
    model.blocks[0].register_forward_hook(lambda module, args, output: compute.append(str(output.dtype)))

    generator = torch.Generator().manual_seed(accelerator.process_index)
    losses = []
    for micro_step in range(2):
        model.set_requires_gradient_sync(micro_step == 1)  # what accelerator.accumulate does under FSDP2
        x = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), generator=generator)
        y = torch.randint(0, cfg.vocab_size, (4, cfg.block_size), generator=generator)
        _, loss = model(x, y)
        losses.append(str(loss.dtype))
        (loss / 2).backward()
    report = {
        "loss": losses,
        "block_output": compute,
        "reduced": reduced,
        "grads": sorted({str(p.grad.dtype) for p in model.parameters()}),
        "params": sorted({str(p.dtype) for p in model.parameters()}),
    }
    if accelerator.is_main_process:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
