"""bf16 on a CPU: kept where the CPU computes it natively, fp32 with one line where it would be emulated."""

import subprocess
import sys

from gpt.cpu import Bf16Support, bf16_support, training_precision

from conftest import ROOT, TINY, env

EMULATED = Bf16Support(False, "a bf16 matmul takes 12.0x the time of fp32 here")


def no_measuring() -> float:
    raise AssertionError("the CPU flags should have decided")


def test_bf16_flags_decide_without_measuring_and_their_absence_is_measured():
    assert bf16_support({"fpu", "avx2", "avx512_bf16"}, no_measuring) == Bf16Support(True, "AVX512-BF16")
    assert bf16_support({"amx_bf16", "avx512_bf16"}, no_measuring).native
    assert bf16_support({"fpu", "avx2"}, lambda: 12.0) == EMULATED
    assert bf16_support({"fpu", "avx512f"}, lambda: 1.1).native  # emulated well enough: no slower in practice


def test_launch_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    precision, note = training_precision("auto", "auto", on_cpu=True, support=lambda: EMULATED)
    assert precision == "no" and "bf16 -> fp32" in note and "12.0x" in note and "train.cpu_bf16=always" in note
    precision, note = training_precision("bf16", "always", on_cpu=True, support=lambda: EMULATED)
    assert precision == "bf16" and "kept" in note
    # where bf16 is native, or not on CPU, or not asked for: accelerate gets what it was asked (None: the launch's)
    assert training_precision("auto", "auto", True, lambda: Bf16Support(True, "AMX")) == (None, "")
    assert training_precision("bf16", "auto", False, no_measuring) == ("bf16", "")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert training_precision("auto", "auto", True, no_measuring) == (None, "")


def test_the_trainer_trains_in_fp32_where_bf16_would_be_emulated(tmp_path, data_root):
    code = (
        "import runpy, sys, gpt.cpu as c; c.bf16_support = lambda: c.Bf16Support(False, 'faked'); "
        f"sys.argv = sys.argv[1:]; runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')"
    )
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={tmp_path / 'run'}"]
    args += ["train.max_steps=2", "train.final_eval=false", "train.eval_samples=0", "train.mixed_precision=bf16"]
    r = subprocess.run(
        [sys.executable, "-c", code, "train.py", *args], cwd=tmp_path, env=env(CUDA_VISIBLE_DEVICES=""),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mixed precision bf16 -> fp32" in r.stdout and "on cpu, mixed precision no" in r.stdout
