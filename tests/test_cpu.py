"""bf16 on a CPU: what runs in bf16 is chosen by the hardware and by timed matmuls of the model's shapes."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import gpt.cpu as cpu
from gpt.config import ModelConfig
from gpt.cpu import Bf16Hardware, MatmulTimes, choose, training_precision
from gpt.model import GPT, head_loss

from conftest import ROOT, TINY, env


def tiny_config(vocab_size: int = 65) -> ModelConfig:
    return ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=vocab_size, dropout=0.0)


def times(bf16_ms: float, fp32_ms: float) -> MatmulTimes:
    return MatmulTimes(128, 768, 4096, bf16_ms, fp32_ms)


AVX2_HEAD = times(3100.0, 500.0)  # F.linear 1024x64 by 50304x64 on a 2-core AVX2 CPU: bf16 6.2x slower
NATIVE_BLOCK, NATIVE_HEAD = times(1.4, 3.6), times(8.0, 24.2)  # measured on an AVX512-BF16 CPU


def no_timing(*args) -> MatmulTimes:
    raise AssertionError("nothing should have been timed")


def test_the_choice_follows_the_hardware_and_the_times():
    assert choose(False, AVX2_HEAD, AVX2_HEAD) == "fp32"  # emulated: bf16 loses in the blocks, so everywhere
    assert choose(True, NATIVE_BLOCK, NATIVE_HEAD) == "bf16"
    assert choose(True, NATIVE_BLOCK, times(30.0, 15.0)) == "fp32 head"  # only the head loses
    assert choose(False, NATIVE_BLOCK, times(12.0, 10.0)) == "fp32 head"  # emulated: any loss past the noise
    # with bf16 instructions a small loss is taken for noise; emulated, the same loss counts
    assert choose(True, times(13.0, 10.0), times(13.0, 10.0)) == "bf16"
    assert choose(False, times(13.0, 10.0)) == "fp32"
    assert choose(True, times(20.0, 10.0), NATIVE_HEAD) == "fp32"
    assert choose(True, NATIVE_BLOCK) == "bf16"  # the head not known yet: never "fp32 head"


def test_the_cpu_flags_name_the_bf16_instructions():
    assert cpu.bf16_hardware({"fpu", "avx2", "avx512_bf16"}) == Bf16Hardware(True, "AVX512-BF16")
    assert cpu.bf16_hardware({"amx_bf16", "avx512_bf16"}) == Bf16Hardware(True, "AVX512-BF16 and AMX")
    assert cpu.bf16_hardware({"fpu", "avx2", "avx512f"}) == Bf16Hardware(False, "no AVX512-BF16 or AMX")


def test_the_matmul_probe_times_both_precisions_once_per_shape():
    first = cpu.matmul_times(8, 16, 24, repeats=1)
    assert (first.rows, first.inner, first.outer) == (8, 16, 24) and first.bf16_ms > 0 and first.fp32_ms > 0
    assert cpu.matmul_times(8, 16, 24, repeats=1) is first  # cached: start-up times each shape once


@pytest.fixture
def emulated(monkeypatch):
    """A CPU without bf16 instructions, where bf16 takes 6.2x the time of fp32."""
    monkeypatch.setattr(cpu, "bf16_hardware", lambda: Bf16Hardware(False, "no AVX512-BF16 or AMX"))
    monkeypatch.setattr(cpu, "matmul_times", lambda rows, inner, outer: MatmulTimes(rows, inner, outer, 3100.0, 500.0))
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_bf16_falls_back_to_fp32_where_the_blocks_lose(monkeypatch, emulated):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    precision, note = training_precision("auto", "auto", on_cpu=True, width=768)
    assert precision == "no" and "bf16 -> fp32" in note and "no AVX512-BF16 or AMX" in note
    assert "128x768 by 3072x768 bf16 3100.00 ms, fp32 500.00 ms (6.20x)" in note and "train.cpu_bf16=always" in note
    precision, note = training_precision("bf16", "always", on_cpu=True, width=768)
    assert precision == "bf16" and "kept" in note
    monkeypatch.setenv("WORLD_SIZE", "2")  # several processes: the hardware decides, nothing is timed
    monkeypatch.setattr(cpu, "matmul_times", no_timing)
    assert training_precision("bf16", "auto", on_cpu=True, width=768)[0] == "no"
    # not on CPU, or not bf16: accelerate gets what it was asked (None: the launch's), nothing timed
    assert training_precision("bf16", "auto", False, 768) == ("bf16", "")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert training_precision("auto", "auto", True, 768) == (None, "")


def test_bf16_stays_where_the_blocks_win_and_the_head_is_chosen_by_its_own_time(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cpu, "bf16_hardware", lambda: Bf16Hardware(True, "AVX512-BF16"))
    head_rows = {}  # the head is timed at its own shape: the vocabulary's columns
    fake = {32 * 4: NATIVE_BLOCK, 65: times(30.0, 15.0)}

    def timed(rows, inner, outer):
        head_rows[outer] = rows
        return fake[outer]

    monkeypatch.setattr(cpu, "matmul_times", timed)
    assert training_precision("bf16", "auto", on_cpu=True, width=32) == ("bf16", "")
    model = GPT(tiny_config())
    accelerator = SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"))
    note = cpu.head_precision(model, accelerator, "auto")
    assert model.fp32_head and "LM head matmul" in note and "(2.00x)" in note
    assert note.endswith("blocks in bf16, LM head and loss in fp32")
    assert set(head_rows) == {128, 65}
    for mixed, cpu_bf16 in (("no", "auto"), ("bf16", "always")):  # nothing to choose: the flag stays off
        model = GPT(tiny_config())
        assert (
            cpu.head_precision(model, SimpleNamespace(mixed_precision=mixed, device=torch.device("cpu")), cpu_bf16)
            == ""
        )
        assert not model.fp32_head


def test_an_fp32_head_under_bf16_autocast_computes_the_loss_in_fp32():
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=97)).eval()
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    hidden = []
    model.ln_f.register_forward_hook(lambda module, args, out: hidden.append(out))
    with torch.autocast("cpu", torch.bfloat16):
        _, bf16_loss = model(idx, targets)
        model.fp32_head = True
        _, loss = model(idx, targets)
    # the reference: the same hidden states (blocks under autocast), the head and loss in fp32 without it
    reference = head_loss(hidden[1].float(), model.wte.weight, targets, model.cfg.loss_chunk_tokens, "mean")
    assert torch.equal(loss, reference)
    assert not torch.equal(bf16_loss, loss)  # the flag changed what the head computed
    loss.backward()
    assert model.wte.weight.grad.dtype == torch.float32 and model.wte.weight.grad.isfinite().all()


def run_train(tmp_path, data_root, patch: str) -> subprocess.CompletedProcess:
    code = (
        f"import runpy, sys, gpt.cpu as c; {patch}; "
        f"sys.argv = sys.argv[1:]; runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    )
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={tmp_path / 'run'}"]
    args += ["train.max_steps=2", "train.final_eval=false", "train.eval_samples=0", "train.mixed_precision=bf16"]
    return subprocess.run(
        [sys.executable, "-c", code, "train.py", *args], cwd=tmp_path, env=env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_the_trainer_trains_in_fp32_where_bf16_is_emulated(tmp_path, data_root):
    r = run_train(
        tmp_path, data_root,
        "c.bf16_hardware = lambda: c.Bf16Hardware(False, 'no AVX512-BF16 or AMX'); "
        "c.matmul_times = lambda rows, inner, outer: c.MatmulTimes(rows, inner, outer, 3100.0, 500.0)",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mixed precision bf16 -> fp32" in r.stdout and "(6.20x)" in r.stdout
    assert "on cpu, mixed precision no" in r.stdout and "LM head" not in r.stdout


def test_the_trainer_keeps_bf16_blocks_and_an_fp32_head_where_only_the_head_loses(tmp_path, data_root):
    r = run_train(
        tmp_path, data_root,
        "c.bf16_hardware = lambda: c.Bf16Hardware(True, 'AVX512-BF16'); "
        "c.matmul_times = lambda rows, inner, outer: c.MatmulTimes(rows, inner, outer, *((1.0, 2.0) "
        "if outer == 4 * inner else (3.0, 1.0)))",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "-> blocks in bf16, LM head and loss in fp32" in r.stdout and "on cpu, mixed precision bf16" in r.stdout
