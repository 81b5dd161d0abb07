"""Runs that die and come back: they must continue exactly as if they had never stopped."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt.checkpoint import latest_checkpoint
from gpt.export import load_exported

from conftest import CPU_CONFIG, ROOT, TINY, accelerate_launch, env, free_port, run_script

# dropout on, so that a resume that forgot the RNG state would not reproduce the losses
RUN = [*TINY, "model.dropout=0.1", "train.log_interval=1", "train.checkpoint_interval=10", "train.keep_last=5"]


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def steps_logged(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_exported(out)[0].state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    args = [*RUN, f"data.root={data_root}", "data.dataset=tiny"]
    r = run_script("train.py", *args, f"out_dir={out}", cwd=out.parent)
    assert r.returncode == 0, r.stderr
    return out, args


def test_killed_then_resumed_run_is_bitwise_identical(uninterrupted, tmp_path):
    reference, args = uninterrupted
    out = tmp_path / "run"
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path, GPT_FAULT="train.step@11:kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert latest_checkpoint(out).name == "step-0000010" and max(losses(out)) == 10
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert losses(out) == losses(reference)  # exact float equality at all 20 steps
    for name, tensor in weights(reference).items():
        assert torch.equal(tensor, weights(out)[name]), name


def test_kill_during_a_save_leaves_the_previous_checkpoint_usable(uninterrupted, tmp_path):
    reference, args = uninterrupted
    out = tmp_path / "run"
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path, GPT_FAULT="save.manifest@20:kill")
    assert r.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / ".tmp-step-0000020").is_dir()  # the half-written save
    assert latest_checkpoint(out).name == "step-0000010"
    assert load_exported(out)[2]["step"] == 10
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert latest_checkpoint(out).name == "step-0000020"
    assert not (out / "checkpoints" / ".tmp-step-0000020").exists()
    assert losses(out) == losses(reference)


def test_sigterm_saves_and_exits_with_the_preemption_code(data_root, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "train.max_steps=100000", "train.log_interval=1", f"data.root={data_root}",
            "data.dataset=tiny", f"out_dir={out}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "stopped by SIGTERM at step" in stdout
    stopped = latest_checkpoint(out)
    step = json.loads((stopped / "trainer_state.json").read_text())["step"]
    assert step == max(losses(out)) and step < 100000
    r = run_script("train.py", *args[:-4], f"train.max_steps={step + 5}", *args[-3:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"at step {step}" in r.stdout and latest_checkpoint(out).name == f"step-{step + 5:07d}"


@pytest.mark.slow
def test_resume_on_another_world_size_continues_the_same_stream(data_root, tmp_path):
    """Saved by 2 processes (accumulation 1), resumed on 1 process (accumulation 2)."""
    args = [*TINY, "train.log_interval=1", "train.batch_size=8", "train.micro_batch_size=4",
            f"data.root={data_root}", "data.dataset=tiny", "train.keep_last=5"]  # fmt: skip
    two = tmp_path / "two"
    r = accelerate_launch("--config_file", CPU_CONFIG, "--main_process_port", str(free_port()),
                          str(ROOT / "train.py"), *args, f"out_dir={two}", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    shutil.copytree(two, one)
    shutil.rmtree(one / "checkpoints" / "step-0000020")  # as if the 2-process run had died after step 10
    (one / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (two / "metrics.jsonl").read_text().splitlines()[:10])
    )
    r = run_script("train.py", *args, f"out_dir={one}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "x 2 accumulation steps" in r.stdout and "at step 10" in r.stdout
    expected, resumed = losses(two), losses(one)
    assert sorted(resumed) == list(range(1, 21))
    for step in range(11, 21):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-5)
    for name, tensor in weights(two).items():
        torch.testing.assert_close(weights(one)[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_launcher_restart_resumes_without_user_action(data_root, tmp_path):
    out = tmp_path / "run"
    # torch's elastic agent, which `accelerate launch --max_restarts` runs for multi-process launches; one
    # process, so that what is tested is the restart and resume=auto, not gloo re-forming its mesh
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--max_restarts", "1",
           "--master_port", str(free_port()), str(ROOT / "train.py"), *TINY, f"data.root={data_root}",
           "data.dataset=tiny", f"out_dir={out}"]  # fmt: skip
    fault = "save.done@10:crash:attempt=0"  # a crash after the checkpoint of step 10, on the first attempt only
    r = subprocess.run(cmd, cwd=tmp_path, env=env(GPT_FAULT=fault), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "injected crash at save.done step 10" in r.stderr  # on the first attempt only
    assert "resumed from" in r.stdout and latest_checkpoint(out).name == "step-0000020"


def test_resuming_a_different_model_shape_is_refused(uninterrupted, tmp_path):
    reference, args = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    r = run_script("train.py", *args, "model.n_layer=3", f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "model.n_layer is 2 in the checkpoint but 3 now" in r.stderr


def test_a_damaged_newest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(uninterrupted, tmp_path):
    reference, args = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    optimizer = latest_checkpoint(out) / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:-7])
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{optimizer} is truncated or corrupt" in r.stderr and "resuming from step-0000010" in r.stderr
    assert losses(out) == losses(reference)  # steps 11-20 again, exactly, and logged once each
    assert steps_logged(out) == steps_logged(reference)  # nothing logged twice

    only = tmp_path / "only"  # nothing older to fall back to: one line naming the file
    shutil.copytree(reference, only)
    shutil.rmtree(only / "checkpoints" / "step-0000010")
    optimizer = latest_checkpoint(only) / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:-7])
    r = run_script("train.py", *args, "train.max_steps=30", f"out_dir={only}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{optimizer} is truncated or corrupt" in r.stderr


def test_running_a_finished_run_again_does_nothing(uninterrupted, tmp_path):
    reference, args = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    r = run_script("train.py", *args, f"out_dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already trained to step 20" in r.stdout
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    (final,) = [row["final/val/loss"] for row in rows if "final/val/loss" in row]
    assert f"val loss {final:.4f}" in r.stdout  # what the run printed when it finished, not a periodic estimate
    assert losses(out) == losses(reference) and latest_checkpoint(out).name == "step-0000020"
