"""gpt/optim.py: AdamW's parameter groups and their per-kind learning rates (train.*_lr_scale)."""

import torch

from gpt.config import ModelConfig, TrainConfig
from gpt.model import GPT
from gpt.optim import build_optimizer, param_kind, set_lr


def tiny_gpt(**kw) -> GPT:
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=20, **kw))


def names(model: torch.nn.Module, group: dict) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


def test_default_scales_keep_the_two_groups_in_parameter_order():
    model = tiny_gpt(tie_head=False, value_embeds=1)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = opt.param_groups
    every = [n for n, _ in model.named_parameters()]
    assert names(model, decayed) == [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert names(model, plain) == [n for n, p in model.named_parameters() if p.dim() < 2]
    assert sorted(names(model, decayed) + names(model, plain)) == sorted(every)
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)


def test_each_kind_gets_its_scaled_rate_and_keeps_its_weight_decay():
    model = tiny_gpt(tie_head=False, value_embeds=1, unet_skips=True)
    t = TrainConfig(weight_decay=0.1, embed_lr_scale=5.0, head_lr_scale=0.5, scalar_lr_scale=3.0)
    opt = build_optimizer(model, t, torch.device("cpu"))
    set_lr(opt, 0.01)
    rate = {}
    for group in opt.param_groups:
        for name in names(model, group):
            rate[name] = (group["lr"], group["weight_decay"])
    assert rate["wte.weight"] == rate["value_embeds.0.weight"] == (0.05, 0.1)
    assert rate["lm_head.weight"] == (0.005, 0.1)
    assert rate["skip_weights"] == rate["blocks.0.attn.value_mix"] == rate["blocks.1.ln_1.weight"] == (0.03, 0.0)
    assert rate["blocks.0.attn.qkv.weight"] == rate["blocks.1.mlp.proj.weight"] == (0.01, 0.1)
    assert len(rate) == len(list(model.parameters()))  # every parameter in exactly one group


def test_param_kinds():
    model = tiny_gpt(tie_head=False, value_embeds=1)
    kinds = {n: param_kind(n, p) for n, p in model.named_parameters()}
    assert kinds["wte.weight"] == kinds["value_embeds.0.weight"] == "embed"
    assert kinds["lm_head.weight"] == "head"
    assert kinds["blocks.0.attn.qkv.weight"] == "matrix"
    assert kinds["blocks.0.ln_1.bias"] == "scalar"
