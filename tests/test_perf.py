"""FLOPs and MFU arithmetic, the benchmark command, the wall-clock budget, and the Muon optimizer."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from gpt import perf
from gpt.checkpoint import check_same_model, clean_state_dict, latest_checkpoint
from gpt.config import ModelConfig, TrainConfig, load_config, to_dict
from gpt.errors import UserError
from gpt.model import GPT
from gpt.optim import MuonWithAdamW, build_optimizer, set_lr
from gpt.schedule import lr_at

from conftest import ROOT, TINY, accelerate_launch, env, free_port, run_script, tiny

HELPER = "tests/helpers/train_and_fingerprint.py"


@pytest.mark.parametrize("features", [{}, {"tie_head": False}, {"pad_vocab_to": 64}, {"bias": False, "n_layer": 3}])
def test_flops_count_every_weight_that_multiplies_an_activation(features):
    cfg = tiny(**features)
    model = GPT(cfg)
    head = model.wte.weight if model.lm_head is None else model.lm_head.weight
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2] + [head]
    assert perf.matmul_params(cfg) == sum(p.numel() for p in matrices)
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert perf.flops_per_token(cfg) == 6 * sum(p.numel() for p in matrices) + attention


def test_gpt2_small_flops_match_nanogpts_estimate():
    # nanoGPT's estimate_mfu for GPT-2 124M (vocabulary 50304, context 1024): 6N + 12 * 12 * 768 * 1024 per
    # token, N = get_num_params() = 123,689,472 (no position table; tied head, biases and norm gains included).
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, pad_vocab_to=64)
    nanogpt = 6 * 123_689_472 + 12 * 12 * 768 * 1024
    assert 0 < (nanogpt - perf.flops_per_token(cfg)) / nanogpt < 0.001  # biases and norm gains are not matmuls


def test_mfu_against_the_peak_table():
    assert perf.mfu(1_000_000, 2e6, 1, 312.0) == pytest.approx(2e12 / 312e12)
    assert perf.mfu(1_000_000, 2e6, 8, 312.0) == pytest.approx(2e12 / (8 * 312e12))  # the peak of all GPUs
    assert perf.mfu(1_000_000, 2e6, 1, None) is None
    assert perf.peak_tflops(torch.device("cpu"), "bf16") is None
    assert perf.training_peak(0.0, torch.device("cpu"), "bf16") is None
    assert perf.training_peak(2.5, torch.device("cpu"), "no") == perf.Peak(2.5, "configured peak (train.peak_tflops)")
    assert perf.peak_memory_bytes(torch.device("cpu")) > 10 * 2**20


@pytest.mark.parametrize(
    "name, precision, tflops, label",
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0, "A100/A800"),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156.0, "A100/A800"),
        ("NVIDIA A800-SXM4-80GB", "bf16", 312.0, "A100/A800"),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4, "H100 SXM"),
        ("NVIDIA H100 80GB HBM3", "fp32", 66.9, "H100 SXM"),
        ("NVIDIA H100 PCIe", "bf16", 756.0, "H100 PCIe"),
        ("NVIDIA H100 NVL", "bf16", 835.5, "H100 NVL"),  # not the SXM part's 989
        ("NVIDIA H200", "bf16", 989.4, "H200 SXM"),
        ("NVIDIA H200 NVL", "bf16", 835.5, "H200 NVL"),
        ("NVIDIA H800", "tf32", 494.7, "H800 SXM"),
        ("NVIDIA L4", "bf16", 121.0, "L4"),
        ("NVIDIA L40S", "bf16", 362.1, "L40S"),
        ("NVIDIA A10", "bf16", 125.0, "A10"),
        ("NVIDIA GeForce RTX 4090", "tf32", 82.6, "RTX 4090"),
    ],
)
def test_peak_is_looked_up_by_device_and_precision(name, precision, tflops, label):
    peak = perf.lookup_peak(name, precision)
    assert peak == perf.Peak(tflops, f"{label} dense {precision} peak")


def test_peak_precision_follows_autocast_then_the_fp32_matmul_setting():
    assert perf.matmul_precision("bf16", "highest") == "bf16"
    assert perf.matmul_precision("fp16", "high") == "bf16"
    assert perf.matmul_precision("no", "high") == "tf32"  # fp32 runs are measured against TF32, not bf16
    assert perf.matmul_precision("no", "highest") == "fp32"
    assert perf.matmul_precision("no", "medium") == "bf16"
    assert perf.lookup_peak("NVIDIA A10G", "bf16") is None  # unknown parts: no MFU rather than a wrong one
    assert perf.lookup_peak("Tesla V100-SXM2-16GB", "bf16") is None


def test_lr_follows_the_time_budget_when_given_progress():
    t = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=1000)
    assert lr_at(4, t, progress=0.9) == pytest.approx(5e-4)  # warm-up goes by steps
    assert lr_at(500, t, progress=0.0) == pytest.approx(1e-3)
    assert lr_at(20, t, progress=0.5) == pytest.approx(5.5e-4)  # half the budget: half-way down the cosine
    assert lr_at(20, t, progress=1.3) == pytest.approx(1e-4)
    assert lr_at(505, t) == pytest.approx(5.5e-4)  # without a budget, by steps as before


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


def test_compiled_model_weights_save_under_plain_names():
    model = GPT(tiny())
    compiled = torch.compile(model)  # wrapping is lazy: nothing compiles until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert clean_state_dict(compiled.state_dict()).keys() == model.state_dict().keys()


def test_resume_refuses_another_architecture(tmp_path):
    saved = to_dict(tiny())
    del saved["position"]  # a checkpoint from before the option existed reads as the default
    check_same_model(saved, tiny(), tmp_path)
    with pytest.raises(UserError, match="model.position is 'learned' in the checkpoint but 'rope' now"):
        check_same_model(saved, tiny(position="rope"), tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.n_embd=36", "model.n_head=4", "model.position=rope"], "needs an even head size"),
        (["model.pad_vocab_to=0"], "'model.pad_vocab_to' must be >= 1"),
        (["train.time_budget_s=-1"], "'train.time_budget_s' must be >= 0"),
        (["train.muon_momentum=1.5"], r"'train.muon_momentum' must be in \[0, 1\)"),
    ],
)
def test_bad_feature_settings_are_refused(args, message):
    with pytest.raises(UserError, match=message):
        load_config(args)


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


def test_time_budget_ends_training_and_decays_the_lr(tmp_path, data_root):
    out = tmp_path / "budget"
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "train.max_steps=1000000"]
    budget = ["train.time_budget_s=15", "train.min_lr=0", "train.log_interval=1", "train.eval_interval=100000"]
    r = run_script("train.py", *args, *budget)
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in logged if "train/loss" in r]  # the training steps' records (not the final evaluation)
    last = records[-1]
    assert 5 < last["step"] < 1_000_000 and "eval/val/loss" in last  # stopped by the clock, then evaluated
    assert max(r["lr"] for r in records) == pytest.approx(TrainConfig().learning_rate)  # warm-up to the top...
    assert last["lr"] < 0.05 * TrainConfig().learning_rate  # ...and the cosine has come down with the time
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert 15 <= state["elapsed_s"] < 15 + 120


def test_bench_times_the_trainer_and_the_plain_loop_on_the_same_work(tmp_path, data_root):
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", "--compare", "--steps", "3", "--warmup", "1"]
    r = subprocess.run(
        [sys.executable, "-m", "gpt.bench", *args, "--rounds", "1", "--peak_tflops", "1"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    bare, trainer = result["compare"]
    assert (bare["mode"], trainer["mode"]) == ("bare", "trainer")
    assert bare["final_loss"] == pytest.approx(trainer["final_loss"], abs=1e-5)  # same model, batches, updates
    for rec in (bare, trainer):
        assert rec["timed_steps"] == 3 and rec["step_ms_median"] > 0
        assert rec["tokens_per_s"] == pytest.approx(8 * 32 / (rec["step_ms_median"] / 1000), rel=1e-3)
        assert rec["mfu"] == pytest.approx(rec["flops_per_token"] * rec["tokens_per_s"] / 1e12, rel=1e-2)
    assert result["ratio_trainer_to_bare"] == pytest.approx(trainer["step_ms_median"] / bare["step_ms_median"], 1e-3)
    assert "trainer / bare median step time" in r.stdout
    assert not (tmp_path / "out").exists()  # a benchmark writes no run directory


def test_bench_times_a_multi_process_launch(tmp_path, data_root):
    # What the 8-GPU command does, on 2 CPU processes over gloo: one record, for the whole launch.
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", "train.micro_batch_size=4"]
    args += ["--steps", "3", "--warmup", "2", "--peak_tflops", "1"]
    r = accelerate_launch(
        "--config_file", str(ROOT / "launch" / "cpu_multiprocess.yaml"), "--num_processes", "2",
        "--main_process_port", str(free_port()), "-m", "gpt.bench", *args, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1  # printed by the main process only
    assert r.stderr.count("warm-up: 1 of 2 steps in") == 1  # progress as soon as a step is done, main process
    rec = records[0]
    assert rec["processes"] == 2 and rec["mode"] == "trainer"
    assert rec["tokens_per_s"] == pytest.approx(8 * 32 / (rec["step_ms_median"] / 1000), rel=1e-3)  # global batch
    assert rec["mfu"] == pytest.approx(rec["flops_per_token"] * rec["tokens_per_s"] / 2e12, rel=1e-2)  # 2 devices


def test_bench_help_and_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpt.bench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--peak_tflops" in r.stdout and "MFU" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "gpt.bench", "model.n_layers=2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean 'model.n_layer'" in r.stderr


def test_flops_of_the_bigram_are_zero():
    assert perf.flops_per_token(ModelConfig(kind="bigram", vocab_size=65)) == 0
    assert perf.mfu(0, 1e6, 1, 312.0) is None
