"""The benchmark command: the trainer and the plain loop timed on the same work, its help and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, env


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


def test_bench_help_and_bad_input(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gpt.bench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "--peak_tflops" in r.stdout and "MFU" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "gpt.bench", "model.n_layers=2"], capture_output=True, text=True, cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "did you mean 'model.n_layer'" in r.stderr
