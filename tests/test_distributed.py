"""Several processes over gloo on this machine, launched the way users launch them."""

import json
from pathlib import Path

import pytest

from conftest import ROOT, TINY, accelerate_launch, free_port

HELPER = str(ROOT / "tests" / "helpers" / "train_and_fingerprint.py")
CPU_CONFIG = str(ROOT / "launch" / "cpu_multiprocess.yaml")


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
def test_two_processes_end_with_the_same_weights_on_both_ranks(tmp_path, data_root):
    out = tmp_path / "ddp"
    r = accelerate_launch(
        "--config_file",
        CPU_CONFIG,
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        HELPER,
        *TINY,
        "train.micro_batch_size=2",
        f"data.root={data_root}",
        "data.dataset=tiny",
        f"out_dir={out}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout and "x 2 accumulation steps" in r.stdout
    w0, w1 = (out / "weights-0.txt").read_text(), (out / "weights-1.txt").read_text()
    assert w0 == w1
    assert losses(out)[-1] < losses(out)[0]
