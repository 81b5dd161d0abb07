"""The optimizers: Muon for the block matrices with AdamW for the rest, its state and its resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from gpt.config import ModelConfig, TrainConfig
from gpt.errors import UserError
from gpt.model import GPT
from gpt.optim import MuonWithAdamW, build_optimizer, param_kind, set_lr

from conftest import TINY, run_script, tiny

HELPER = "tests/helpers/train_and_fingerprint.py"


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = GPT(tiny(tie_head=False))
    t = TrainConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02)
    opt = build_optimizer(model, t, torch.device("cpu"))
    assert isinstance(opt, MuonWithAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = sorted(names[id(p)] for g in opt.muon.param_groups for p in g["params"])
    assert muon == sorted(n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2)
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert {"wte.weight", "wpe.weight", "lm_head.weight", "blocks.0.attn.qkv.bias"} <= adamw
    set_lr(opt, 5e-4)  # half the peak: both optimizers follow the schedule
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.01)
    assert opt.adamw.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_muon_state_round_trips_through_its_state_dict():
    torch.manual_seed(0)
    t = TrainConfig(optimizer="muon")

    def trained(steps: int, state=None):
        torch.manual_seed(0)
        model = GPT(tiny())
        opt = build_optimizer(model, t, torch.device("cpu"))
        if state is not None:
            model.load_state_dict(state[0])
            opt.load_state_dict(state[1])
        x = torch.randint(0, 65, (4, 17), generator=torch.Generator().manual_seed(1))
        for _ in range(steps):
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad()
        return model, opt

    model, opt = trained(3)
    saved = (model.state_dict(), opt.state_dict())
    torch.save(saved[1], buffer := __import__("io").BytesIO())
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=True)  # what accelerate's load_state does
    continued, _ = trained(2, (saved[0], reloaded))
    straight, _ = trained(5)
    for a, b in zip(continued.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(UserError, match="not Muon with AdamW"):
        opt.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_muon_needs_a_torch_that_has_it(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(UserError, match="needs torch.optim.Muon"):
        build_optimizer(GPT(tiny()), TrainConfig(optimizer="muon"), torch.device("cpu"))


def test_muon_needs_weight_matrices():
    with pytest.raises(UserError, match="needs a model with weight matrices"):
        build_optimizer(GPT(tiny()).wte, TrainConfig(optimizer="muon"), torch.device("cpu"))


def test_resume_with_muon_gives_the_same_weights_as_one_run(tmp_path, data_root):
    common = [*TINY, f"data.root={data_root}", "data.dataset=tiny", "train.optimizer=muon", "model.position=rope"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    r = run_script(HELPER, *common, f"out_dir={whole}", cwd=tmp_path)  # 20 steps, checkpoints at 10 and 20
    assert r.returncode == 0, r.stderr
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-0000020")  # as if stopped after the checkpoint of step 10
    (resumed / "weights-0.txt").unlink()
    r = run_script(HELPER, *common, f"out_dir={resumed}", cwd=tmp_path)
    assert r.returncode == 0 and "at step 10" in r.stdout, r.stderr
    assert (whole / "weights-0.txt").read_text() == (resumed / "weights-0.txt").read_text()


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
