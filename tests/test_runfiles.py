"""The run folder's files: metrics.jsonl written whole or not at all, and the lock of a run folder."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys

import pytest

from gpt.errors import UserError
from gpt.runfiles import MetricsLog, lock_run_dir

from conftest import env


def test_metrics_are_strict_json_and_a_torn_line_or_replayed_steps_are_dropped_on_resume(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.write({"step": step, "train/loss": 1.0 / step, "grad_norm": math.inf if step == 2 else 0.5})
    rows = [
        json.loads(line, parse_constant=pytest.fail) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert rows[1]["grad_norm"] is None  # a step the fp16 scaler skipped: null, not Infinity
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # cut short by a crash or a full disk
    MetricsLog(tmp_path, enabled=True, resumed_step=2).write({"step": 3, "train/loss": 0.25})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_the_run_lock_is_reentrant_in_one_process_and_freed_when_released(tmp_path):
    first = lock_run_dir(tmp_path)
    again = lock_run_dir(tmp_path)  # train() called twice in one process (a notebook)
    again.release()
    code = f"from gpt.runfiles import lock_run_dir; lock_run_dir({str(tmp_path)!r})"
    holder = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert holder.returncode != 0 and "in use by another training" in holder.stderr
    first.release()
    lock_run_dir(tmp_path).release()


def test_a_metrics_write_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path):
    import resource

    log = MetricsLog(tmp_path, enabled=True)
    log.write({"step": 1, "train/loss": 2.0})
    size = (tmp_path / "metrics.jsonl").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, hard))  # room for 10 bytes of the next record
    try:
        with pytest.raises(UserError, match="no space left"):
            log.write({"step": 2, "train/loss": 1.5, "note": "x" * 100})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert (tmp_path / "metrics.jsonl").stat().st_size == size  # the 10 bytes that fitted were taken back
