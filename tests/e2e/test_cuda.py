"""On one CUDA GPU: each precision trains and resumes bitwise, compile, accelerate's FSDP2, the flash
attention kernel, cached generation in bf16, the memory planner against a real peak, memory metrics.

Every test here needs a CUDA GPU and is skipped without one (``bench/gpu_check.sh`` runs them with
the benchmark and a short training). They need neither ``datasets`` nor ``wandb``: the data is
written straight to token files, and W&B is off.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt.checkpoint import checkpoints_dir, complete_checkpoints, latest_checkpoint, step_dir_name
from gpt.data import TokenFileWriter
from gpt.tokenizer import ASSETS, CharTokenizer, save_tokenizer

from conftest import HELPERS, ROOT, accelerate_launch, env, free_port, metrics, output, run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")

# Small enough for seconds per run; dropout and 2 accumulation steps so that resuming must restore the
# CUDA RNG and the gradient scaler mid-run. Explicit attention: its kernels are deterministic, so two
# runs can be compared bitwise (the fused attention's backward may sum in varying order).
SMALL = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "model.dropout=0.1",
    "model.attention=explicit", "train.batch_size=8", "train.micro_batch_size=4", "train.max_steps=8",
    "train.warmup_steps=2", "train.log_interval=1", "train.eval_interval=4", "train.eval_windows=8",
    "train.checkpoint_interval=4", "train.keep_last=10", "train.final_eval=false", "train.eval_samples=0",
]  # fmt: skip
DETERMINISTIC = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # cuBLAS picks the same reduction order every time


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """data_root/tiny: the first 100,000 characters of Tiny Shakespeare, character-level, 90/10,
    written with the token-file writer directly (no ``datasets``, which GPU machines may lack)."""
    root = tmp_path_factory.mktemp("data")
    text = (ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")[:100_000]
    tokenizer = CharTokenizer.from_text(text)
    split = int(0.9 * len(text))
    for name, part in (("train", text[:split]), ("val", text[split:])):
        with TokenFileWriter(root / "tiny" / f"{name}.tok", tokenizer.vocab_size, tokenizer.identity) as w:
            w.write(tokenizer.encode(part))
    save_tokenizer(tokenizer, root / "tiny" / "tokenizer.json")
    return root


def args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [*SMALL, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", *extra]


def weights_at(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoints_dir(out) / step_dir_name(step) / "model" / "model.safetensors"))


def resume_from_copy(source: Path, step: int, out: Path) -> None:
    """out starts as a run stopped at ``step``: a copy of that checkpoint of ``source``."""
    name = step_dir_name(step)
    shutil.copytree(checkpoints_dir(source) / name, checkpoints_dir(out) / name)


@pytest.mark.parametrize(
    "precision, compile_",
    [("no", False), ("bf16", False), ("fp16", False), ("bf16", True)],
    ids=["fp32", "bf16", "fp16", "bf16-compile"],
)
def test_each_precision_trains_on_the_gpu_and_resumes_to_the_same_weights(precision, compile_, data_root, tmp_path):
    extra = [f"train.mixed_precision={precision}", f"train.compile={str(compile_).lower()}"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = run_script("train.py", *args(data_root, straight, *extra), **DETERMINISTIC)
    assert r.returncode == 0, output(r)
    assert f"on cuda, mixed precision {precision}" in r.stdout
    losses = [m["train/loss"] for m in metrics(straight) if "train/loss" in m]
    assert len(losses) == 8 and all(loss == loss for loss in losses) and losses[-1] < losses[0]
    memory = [m["memory/gpu_peak_gib"] for m in metrics(straight) if "memory/gpu_peak_gib" in m]
    assert len(memory) == 8 and 0 < min(memory) <= max(memory) < 40  # GPU memory is logged with the losses

    resume_from_copy(straight, 4, resumed)  # the same run, stopped after step 4 ...
    r = run_script("train.py", *args(data_root, resumed, *extra), **DETERMINISTIC)  # ... and resumed
    assert r.returncode == 0, output(r)
    assert "resumed from" in r.stdout and "at step 4" in r.stdout
    got, want = weights_at(resumed, 8), weights_at(straight, 8)
    assert got.keys() == want.keys() and not any("_orig_mod" in k or "module." in k for k in got)
    for name in want:
        if compile_:  # compiled kernels may sum some gradients (embedding backward) in varying order
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(got[name], want[name]), f"{name} differs after resuming ({precision})"
    if precision == "fp16":  # the scaler's state was saved and restored with the rest
        assert all((folder / "scaler.pt").is_file() for folder in complete_checkpoints(straight))


def test_fp16_skips_the_optimizer_step_whose_gradients_overflow(data_root, tmp_path):
    r = subprocess.run(
        [sys.executable, str(HELPERS / "fp16_overflow.py"), str(tmp_path),
         *args(data_root, tmp_path / "run", "train.mixed_precision=fp16", "model.dropout=0.0")],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, output(r)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scaler"] == "GradScaler"
    overflow, ordinary = report["steps"]
    assert not overflow["weights_changed"] and overflow["optimizer_steps"][0] == overflow["optimizer_steps"][1]
    assert overflow["scale_after"] == 2.0**39  # backed off by half
    assert ordinary["weights_changed"] and ordinary["optimizer_steps"][1] == ordinary["optimizer_steps"][0] + 1
    assert ordinary["loss"] == ordinary["loss"]  # finite: not nan


def test_fp16_resumes_a_bf16_checkpoint_with_a_fresh_scaler(data_root, tmp_path):
    out = tmp_path / "run"
    r = run_script("train.py", *args(data_root, out, "train.mixed_precision=bf16", "train.max_steps=4"))
    assert r.returncode == 0, output(r)
    r = run_script("train.py", *args(data_root, out, "train.mixed_precision=fp16"))
    assert r.returncode == 0, output(r)
    assert "has no gradient scaler state" in r.stdout and "fresh scaler" in r.stdout
    assert latest_checkpoint(out).name == "step-0000008" and (latest_checkpoint(out) / "scaler.pt").is_file()


def test_fsdp2_through_accelerate_on_one_gpu_saves_sharded_resumes_and_exports(data_root, tmp_path):
    out = tmp_path / "fsdp"

    def launch(*extra: str):
        return accelerate_launch(
            "--config_file", str(ROOT / "launch" / "fsdp.yaml"), "--num_processes", "1",
            "--main_process_port", str(free_port()), str(ROOT / "train.py"),
            *args(data_root, out, "train.mixed_precision=auto", "model.attention=sdpa", *extra), cwd=tmp_path,
        )  # fmt: skip

    r = launch("train.max_steps=4")
    assert r.returncode == 0, output(r)
    assert "mixed precision bf16" in r.stdout  # from the launch config
    step = latest_checkpoint(out)
    assert (step / "pytorch_model_fsdp_0").is_dir() and (step / "optimizer_0").is_dir()
    assert (step / "model" / "model.safetensors").is_file()  # the export, gathered from the shards
    r = launch()
    assert r.returncode == 0, output(r)
    assert "resumed from" in r.stdout and latest_checkpoint(out).name == "step-0000008"
    s = run_script("sample.py", "--out_dir", str(latest_checkpoint(out) / "model"), "--max_new_tokens", "20",
                   "--num_samples", "1")  # fmt: skip
    assert s.returncode == 0, s.stderr
    assert "--- sample 1 of 1 ---" in s.stdout


def test_training_attention_runs_the_flash_kernel():
    """With only the flash backend allowed, SDPA raises where it would fall back to another kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gpt.config import ModelConfig
    from gpt.model import GPT

    # the lecture's model, and rotary positions with QK-norm (queries and keys rotated and normalised)
    for position, qk_norm in (("learned", False), ("rope", True)):
        cfg = ModelConfig(n_layer=2, n_head=6, n_embd=384, block_size=256, dropout=0.1, position=position,
                          qk_norm=qk_norm, vocab_size=65)  # fmt: skip
        model = GPT(cfg).cuda().train()
        x = torch.randint(0, 65, (4, 256), device="cuda")
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, x)
        loss.backward()
        assert torch.isfinite(loss) and model.blocks[0].attn.qkv.weight.grad is not None


def test_cached_greedy_generation_equals_uncached_in_bf16():
    from test_generate import BLOCK, prompt, run, sharp_model

    model = sharp_model(dtype=torch.bfloat16).cuda()
    idx = prompt(5).cuda()
    cached = run(model, idx, BLOCK - 5, temperature=0)
    uncached = run(model, idx, BLOCK - 5, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.skipif(importlib.util.find_spec("gpt.plan") is None, reason="needs the planner (gpt.plan)")
def test_gpt2_124m_at_micro_batch_16_peaks_within_15_percent_of_the_plan(tmp_path):
    """The planner's estimate of the whole device memory against what a training step really takes:
    the caching allocator's peak reservation plus what lies outside it (CUDA context, cuBLAS)."""
    preset = ["bench_gpt2_124m", "train.batch_size=16", "train.micro_batch_size=16", "train.compile=false"]
    plan = subprocess.run(
        [sys.executable, "-m", "gpt.plan", *preset, "--gpus", "1", "--gpu", "h100-80gb"],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert plan.returncode == 0, output(plan)
    estimate = json.loads(plan.stdout.strip().splitlines()[-1])["memory_gib"]
    measured = subprocess.run(
        [sys.executable, str(HELPERS / "gpu_peak.py"), *preset],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert measured.returncode == 0, output(measured)
    peak = json.loads(measured.stdout.strip().splitlines()[-1])["device_peak_gib"]
    assert abs(peak - estimate) <= 0.15 * estimate, f"measured {peak:.2f} GiB, planned {estimate:.2f} GiB"
