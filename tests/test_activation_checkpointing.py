"""train.activation_checkpointing: the same loss and gradients, less memory kept for backward, plain names."""

import json
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from accelerate.utils.fsdp_utils import fsdp2_apply_ac
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from gpt.activation_checkpointing import apply, wrap_blocks
from gpt.config import load_config
from gpt.errors import UserError
from gpt.export import load_exported, resolve_export
from gpt.fsdp import accelerate_plugin
from gpt.model import GPT
from gpt.trainer import train

from conftest import TINY, tiny


def step(model: GPT, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, gradients by (plain) parameter name, and bytes autograd kept for backward (distinct storages)."""
    idx = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(1))
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(seed)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, idx)
    loss.backward()
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}
    return loss, grads, sum(kept.values())


def test_checkpointed_blocks_give_the_same_loss_and_gradients_and_keep_less():
    torch.manual_seed(0)
    plain = GPT(tiny(dropout=0.1))  # dropout: the recomputation must replay the same masks
    torch.manual_seed(0)
    wrapped = wrap_blocks(GPT(tiny(dropout=0.1)))
    loss, grads, kept = step(plain)
    wrapped_loss, wrapped_grads, wrapped_kept = step(wrapped)
    torch.testing.assert_close(wrapped_loss, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(wrapped_grads[name], grad, msg=name)
    assert wrapped_kept < kept / 2


def test_checkpointed_model_saves_and_loads_under_plain_names():
    plain, wrapped = GPT(tiny()), wrap_blocks(GPT(tiny()))
    assert wrapped.state_dict().keys() == plain.state_dict().keys()
    wrapped.load_state_dict(plain.state_dict())  # strict
    idx = torch.randint(0, 65, (2, 16))
    torch.testing.assert_close(wrapped.eval()(idx)[0], plain.eval()(idx)[0])
    cache = wrapped.new_cache()
    with torch.inference_mode():  # generation goes through the wrappers too
        torch.testing.assert_close(wrapped(idx, cache=cache)[0], plain(idx)[0])


def train_losses(out, data_root, *extra: str) -> list[float]:
    args = TINY + [
        f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "wandb.mode=disabled",
        "train.max_steps=4", "train.log_interval=1", "train.eval_interval=2", "train.eval_samples=1",
        "train.eval_sample_tokens=4", "train.checkpoint_interval=4", "model.dropout=0.1", *extra,
    ]  # fmt: skip
    train(load_config(args))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[k] for r in records for k in ("train/loss", "eval/val/loss", "final/val/loss") if k in r]


@pytest.mark.slow
def test_trainer_with_activation_checkpointing_trains_the_same_model(tmp_path, data_root):
    plain = train_losses(tmp_path / "plain", data_root)
    checkpointed = train_losses(tmp_path / "ac", data_root, "train.activation_checkpointing=true")
    assert len(plain) == 4 + 2 + 1
    assert checkpointed == pytest.approx(plain, rel=1e-6)
    model, _, _ = load_exported(resolve_export(tmp_path / "ac"))  # the export loads into a plain model
    reference, _, _ = load_exported(resolve_export(tmp_path / "plain"))
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def fsdp_run(plugin) -> SimpleNamespace:
    """What ``apply`` and accelerate's FSDP2 checkpointing read of an FSDP accelerator (FSDP needs GPUs)."""
    return SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))


def test_under_fsdp_accelerates_own_checkpointing_wraps_every_block_alike():
    plugin = accelerate_plugin(activation_checkpointing=True)
    assert plugin.activation_checkpointing and not accelerate_plugin().activation_checkpointing  # launch's: off
    torch.manual_seed(0)
    plain = GPT(tiny())
    model = GPT(tiny())
    model.load_state_dict(plain.state_dict())
    apply(fsdp_run(plugin), model, enabled=True, dropout=0.0)  # leaves it to accelerate's prepare
    assert not any(isinstance(m, CheckpointWrapper) for m in model.modules())
    plugin.set_auto_wrap_policy(model)  # what accelerate's FSDP2 prepare does, before fully_shard
    fsdp2_apply_ac(fsdp_run(plugin), model)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, CheckpointWrapper)]
    assert wrapped == ["blocks.0", "blocks.1"]
    assert model.state_dict().keys() == plain.state_dict().keys()
    loss, grads, _ = step(plain)
    wrapped_loss, wrapped_grads, _ = step(model)
    torch.testing.assert_close(wrapped_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(wrapped_grads[name], grad, msg=name)


def test_fsdp_checkpointing_with_dropout_is_refused():
    with pytest.raises(UserError, match="model.dropout=0"):
        apply(fsdp_run(accelerate_plugin(activation_checkpointing=True)), GPT(tiny()), enabled=True, dropout=0.1)
