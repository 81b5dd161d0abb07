"""FSDP2 on CPU over gloo with our wrapping policy, a sharded checkpoint, and the export from it.

    accelerate launch --config_file launch/cpu_multiprocess.yaml tests/helpers/fsdp_shard_and_export.py DATA OUT

Every process: shard a small GPT with ``gpt.fsdp.shard_model``, train a few steps on its share of
each batch, save model and optimizer with torch.distributed.checkpoint (the layout accelerate's FSDP
``save_state`` writes), load that checkpoint into a freshly initialised sharded model, and gather
the full weights; the main process writes them as the portable export (``sample.py`` reads it) and
OUT/report.json with what the test checks.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate import Accelerator
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from gpt import checkpoint as ckpt
from gpt.config import ModelConfig
from gpt.data import BatchStream, TokenStream, split_files
from gpt.fsdp import shard_model
from gpt.model import build_model
from gpt.tokenizer import load_tokenizer

STEPS = 6


def sharded_gpt(cfg: ModelConfig, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = shard_model(build_model(cfg))
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Gathered on the main process (empty elsewhere): what the trainer exports under FSDP."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(data: Path, out: Path) -> None:
    accelerator = Accelerator(cpu=True)  # the gloo process group; the sharding below is torch's own
    rank, world = accelerator.process_index, accelerator.num_processes
    tokenizer = load_tokenizer(data / "tokenizer.json")
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=tokenizer.vocab_size)
    model, optimizer = sharded_gpt(cfg, seed=0)

    report = {
        "world": world,
        "units": [name for name, m in model.named_modules() if isinstance(m, FSDPModule)],
        "shards": {
            name: {"global": list(p.shape), "local": list(p.to_local().shape), "dtensor": isinstance(p, DTensor)}
            for name, p in model.named_parameters()
        },
        "losses": [],
    }
    batches = BatchStream(
        TokenStream(split_files(data, "train")), seed=0, block_size=cfg.block_size, batch_size=8,
        micro_batch_size=8 // world, rank=rank, world=world, start_step=0,
    )  # fmt: skip
    for _ in range(STEPS):
        ((x, y),) = batches.next_step()
        _, loss = model(x, y)
        loss.backward()  # gradients reduce-scattered: each process keeps the mean gradient of its shard
        optimizer.step()
        optimizer.zero_grad()
        report["losses"].append(accelerator.reduce(loss.detach(), reduction="mean").item())
    batches.close()
    trained = full_weights(model)

    sharded = out / "checkpoint"
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=sharded / "pytorch_model_fsdp_0")
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=sharded / "optimizer_0")
    report["files"] = sorted(str(p.relative_to(sharded)) for p in sharded.rglob("*") if p.is_file())

    resumed, resumed_optimizer = sharded_gpt(cfg, seed=1)  # other initial weights, overwritten by the load
    state = {"model": get_model_state_dict(resumed)}
    dcp.load(state, checkpoint_id=sharded / "pytorch_model_fsdp_0")
    set_model_state_dict(resumed, state["model"])
    state = {"optimizer": get_optimizer_state_dict(resumed, resumed_optimizer)}
    dcp.load(state, checkpoint_id=sharded / "optimizer_0")
    set_optimizer_state_dict(resumed, resumed_optimizer, state["optimizer"])
    exported = full_weights(resumed)

    if accelerator.is_main_process:
        report["resumed_equals_trained"] = sorted(exported) == sorted(trained) and all(
            torch.equal(exported[k], trained[k]) for k in trained
        )
        report["optimizer_steps_restored"] = [
            float(s["step"]) for s in resumed_optimizer.state_dict()["state"].values()
        ][:1]
        weights = out / "checkpoint" / ckpt.WEIGHTS
        ckpt.save_weights(exported, weights)
        ckpt.write_export(out / "export", weights, cfg, tokenizer, {"step": STEPS})
        (out / "report.json").write_text(json.dumps(report, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
