"""The benchmark command timing a multi-process launch."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, TINY, accelerate_launch, free_port


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
