"""Runs that are killed, fill the disk, diverge, share a folder or meet damaged files lose nothing:
every resume is exact, and every bad input is one clear line (figures in docs/reliability.md)."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from gpt import checkpoint as ckpt
from gpt.errors import UserError
from gpt.export import load_exported
from gpt.runfiles import MetricsLog, lock_run_dir

from conftest import ROOT, TINY, env, run_script

CAMPAIGN = ROOT / "tests" / "helpers" / "fault_campaign.py"


def campaign(*args: str) -> dict:
    r = subprocess.run([sys.executable, str(CAMPAIGN), *args], env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def test_kill_9_and_full_disks_at_38_moments_lose_at_most_one_interval_and_resume_exactly():
    # 32 seeded moments and 6 after random delays: how many attempts resume depends on where the timed
    # kills land (22 to 28 seen), so there are enough moments for at least 20 resumes either way
    report = campaign("kills", "--seed", "0", "--moments", "32", "--timed", "6")
    assert report["moments"] == 38 and report["timed_kills"] == 6
    phases = {fault.split("@")[0].split(":")[0] + ":" + fault.rsplit(":", 1)[1] for fault in report["faults"]}
    save = ["save.begin", "save.state", "save.export", "save.manifest", "save.publish", "save.latest", "save.rotate"]
    assert {f"{p}:kill" for p in save} | {f"{p}:enospc" for p in save} <= phases
    assert {"train.step:kill", "resume.verify:kill", "resume.load:kill"} <= phases
    assert report["attempts_resumed_exact"] == report["resumes"] >= 20
    assert report["max_steps_lost"] <= report["checkpoint_interval"]
    assert report["enospc_one_line"] == len(save)
    assert report["final_losses_equal"] and report["final_weights_identical"]


def test_every_kind_of_damaged_file_is_one_clear_line():
    report = campaign("damage")
    failed = [case for case in report["cases"] if not case["one_clear_line"]]
    assert not failed, failed
    assert report["bad_inputs"] >= 20


def test_a_diverging_run_saves_no_nan_checkpoint_and_names_the_last_good_one(data_root, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "train.checkpoint_interval=2",
            "train.keep_last=1", "train.log_interval=100", "train.eval_samples=0",
            "train.final_eval=false"]  # fmt: skip
    assert run_script("train.py", *args, "train.max_steps=4", cwd=tmp_path).returncode == 0
    good = ckpt.latest_checkpoint(out)
    assert good.name == "step-0000004"
    # continued with a learning rate that blows up at once: never saved, never rotated
    r = run_script("train.py", *args, "train.learning_rate=1e6", "train.grad_clip=0", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "training diverged" in r.stderr and f"the last good checkpoint is {good}" in r.stderr
    assert "lower train.learning_rate (now 1e+06)" in r.stderr
    assert ckpt.complete_checkpoints(out) == [good]
    load_exported(out)  # finite weights
    r = run_script("train.py", *args, "train.max_steps=6", cwd=tmp_path)  # a sane learning rate continues from it
    assert r.returncode == 0, r.stderr
    assert "at step 4" in r.stdout and ckpt.latest_checkpoint(out).name == "step-0000006"


def test_a_second_training_on_a_run_folder_is_refused_and_readers_never_see_a_half_written_checkpoint(
    data_root, tmp_path
):
    out = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", "train.checkpoint_interval=1", "train.keep_last=1",
            "train.eval_interval=100000", "train.eval_samples=0", f"data.root={data_root}",
            "data.dataset=tiny"]  # fmt: skip
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args, f"out_dir={out}"], cwd=tmp_path,
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline and ckpt.latest_checkpoint(out) is None:
            time.sleep(0.1)
        second = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another training (pid {first.pid} on host" in second.stderr
        steps = set()
        for _ in range(20):  # a reader polling while the trainer saves (and rotates away) every step
            _, _, meta = load_exported(out)
            steps.add(meta["step"])
        assert len(steps) > 1  # it did read while checkpoints came and went
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 75


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


def test_a_full_disk_names_what_survived(tmp_path):
    from gpt.guards import disk_full_error

    folder = tmp_path / "run" / "checkpoints" / "step-0000010"
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"x" * 4096)
    ckpt.write_manifest(folder)
    partial = tmp_path / "run" / "checkpoints" / ".tmp-step-0000020"
    partial.mkdir()
    error = disk_full_error(OSError(28, "No space left on device"), str(tmp_path / "run"), "checkpoint 20", partial)
    assert isinstance(error, UserError) and not partial.exists()
    assert f"the checkpoint {folder} is intact" in str(error) and "MiB free" in str(error)
    assert disk_full_error(ValueError("something else"), str(tmp_path / "run"), "x") is None


def test_the_finite_watch_counts_divergence_but_not_steps_the_fp16_scaler_skipped():
    import torch

    from gpt.guards import FiniteWatch

    fp32, fp16 = FiniteWatch(torch.device("cpu"), fp16=False), FiniteWatch(torch.device("cpu"), fp16=True)
    for watch in (fp32, fp16):
        watch.after_step(torch.tensor(2.0), torch.tensor(1.0), skipped=False)
        watch.after_step(torch.tensor(2.0), torch.tensor(math.inf), skipped=watch.fp16)
    assert fp32.bad_steps.item() == 1 and fp16.bad_steps.item() == 0 and fp16.skipped_steps == 1
    fp16.after_step(torch.tensor(math.nan), torch.tensor(1.0), skipped=False)
    assert fp16.bad_steps.item() == 1  # a NaN loss is divergence under any precision


def test_a_hard_linked_file_is_hashed_once(tmp_path, monkeypatch):
    from gpt import durable

    (tmp_path / "model").mkdir()
    (tmp_path / "w.bin").write_bytes(b"w" * 1000)
    (tmp_path / "model" / "w.bin").hardlink_to(tmp_path / "w.bin")
    calls = []
    real = durable.sha256
    monkeypatch.setattr(durable, "sha256", lambda path, sync=False: calls.append(path) or real(path, sync))
    ckpt.write_manifest(tmp_path)
    ckpt.verify(tmp_path)
    assert len(calls) == 2  # one hash when writing, one when verifying: not one per name


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


def test_a_missing_rng_file_is_a_warning_and_an_unreadable_one_is_refused(tmp_path):
    from gpt.resume import check_rng_state

    assert "process 1 starts with fresh random states" in check_rng_state(tmp_path, rank=1)
    (tmp_path / "random_states_1.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot resume exactly: .*random_states_1.pkl is unreadable"):
        check_rng_state(tmp_path, rank=1)
