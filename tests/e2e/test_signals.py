"""Stop signals and errors under the launchers: a signal to the launcher saves every process's work
and ends the job with code 75; bad input ends it with one line and code 2 (gpt.signals, gpt.launch)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpt.checkpoint import latest_checkpoint

from conftest import CPU_CONFIG, ROOT, TINY, env, free_port, run_script

LONG = [*TINY, "train.max_steps=100000", "train.log_interval=1", "train.micro_batch_size=4",
        "train.eval_interval=100000", "train.checkpoint_interval=100000", "train.final_eval=false"]  # fmt: skip


def launcher_args(processes: int) -> list[str]:
    """accelerate launch options: one process is accelerate's plain subprocess launcher, two its
    torchrun-style elastic agent over gloo."""
    if processes == 1:
        return ["--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no"]  # fmt: skip
    return ["--config_file", CPU_CONFIG, "--num_processes", str(processes), "--main_process_port", str(free_port())]


def gpt_launch(processes: int, *train_args: str) -> list[str]:
    return [sys.executable, "-m", "gpt.launch", *launcher_args(processes), str(ROOT / "train.py"), *train_args]


def run_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [*LONG, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", *extra]


def start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    """In its own session, like a job a scheduler starts (and so that killpg reaches only it)."""
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def wait_for_step(proc: subprocess.Popen, step: int = 2, timeout: float = 120) -> list[str]:
    """Read stdout until the line of ``step`` (training is under way); returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {step} "):
            return lines
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError(f"exited before step {step}: {''.join(lines)}{proc.stderr.read()}")


def finish(proc: subprocess.Popen, lines: list[str]) -> tuple[str, str]:
    stdout, stderr = proc.communicate(timeout=120)
    return "".join(lines) + stdout, stderr


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def checkpoint_step(out: Path) -> int:
    return json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["step"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "processes,sig,target",
    [
        (1, signal.SIGTERM, "launcher"),  # docker stop / kubernetes: SIGTERM to PID 1, the launcher
        (1, signal.SIGINT, "group"),  # Ctrl-C: the terminal signals the whole process group
        (2, signal.SIGUSR1, "launcher"),  # sbatch --signal=B:USR1@120; then resumed
        (2, signal.SIGTERM, "rank 1"),  # one process only: rank 0 still names the signal
    ],
)
def test_a_stop_signal_saves_every_process_and_the_job_exits_75(data_root, tmp_path, processes, sig, target):
    out = tmp_path / "run"
    proc = start(gpt_launch(processes, *run_args(data_root, out)), tmp_path)
    lines = wait_for_step(proc)
    if target == "group":
        os.killpg(proc.pid, sig)
    elif target == "rank 1":
        next(w for w in psutil.Process(proc.pid).children() if w.environ()["RANK"] == "1").send_signal(sig)
    else:
        proc.send_signal(sig)
    stdout, stderr = finish(proc, lines)
    assert proc.returncode == 75, stdout[-3000:] + stderr[-3000:]
    step = checkpoint_step(out)
    assert step == max(logged_steps(out)) >= 2  # saved at the step it stopped at, after the signal
    assert f"stopped by {sig.name} at step {step}; resume with resume=auto" in stdout
    assert "Traceback" not in stderr
    if target == "rank 1":
        return
    if processes == 1:
        return
    # every process wrote its part (its RNG state) into the checkpoint, and the same command continues
    written = {p.name for p in latest_checkpoint(out).glob("random_states_*.pkl")}
    assert written == {"random_states_0.pkl", "random_states_1.pkl"}
    r = subprocess.run(gpt_launch(2, *run_args(data_root, out, f"train.max_steps={step + 2}")), cwd=tmp_path,
                       env=env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {latest_checkpoint(out).parent / f'step-{step:07d}'} at step {step}" in r.stdout
    assert logged_steps(out) == list(range(1, step + 3))  # every step once: none lost, none repeated


@pytest.mark.slow
@pytest.mark.parametrize(
    "processes,sig,launcher_exit",
    [
        (1, signal.SIGUSR1, -signal.SIGUSR1),  # the launcher dies of it; its process notices and saves
        (2, signal.SIGTERM, 128 + signal.SIGTERM),  # torch's agent passes it on and exits 143
    ],
)
def test_plain_accelerate_launch_saves_on_a_stop_signal_but_loses_the_exit_code(
    data_root, tmp_path, processes, sig, launcher_exit
):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher_args(processes), str(ROOT / "train.py"),
           *run_args(data_root, out)]  # fmt: skip
    proc = start(cmd, tmp_path)
    lines = wait_for_step(proc)
    proc.send_signal(sig)
    stdout, _ = finish(proc, lines)  # returns once orphaned training processes have closed their output too
    assert proc.returncode == launcher_exit
    step = checkpoint_step(out)
    assert step == max(logged_steps(out)) and f"at step {step}; resume with resume=auto" in stdout


def handles_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: the SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the signal mask from /proc (Linux)")
def test_a_stop_signal_during_start_up_exits_75_with_nothing_to_save(data_root, tmp_path):
    out = tmp_path / "run"
    proc = start([sys.executable, str(ROOT / "train.py"), *run_args(data_root, out)], tmp_path)
    deadline = time.monotonic() + 60
    while not handles_sigterm(proc.pid):  # the first thing train.py does; torch has not loaded yet
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "stopped by SIGTERM outside the training loop: nothing new to save" in stdout
    assert latest_checkpoint(out) is None and "Traceback" not in stderr


def test_a_run_stopped_before_its_final_evaluation_runs_it_on_restart(data_root, tmp_path):
    """A stop during the final evaluation leaves the last checkpoint without out_dir/eval.json (as
    this run without a final evaluation does): the restart evaluates instead of saying 'already trained'."""
    out = tmp_path / "run"
    args = [*TINY, "train.max_steps=4", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}"]
    r = run_script("train.py", *args, "train.final_eval=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (out / "eval.json").exists()
    r = run_script("train.py", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "already trained" not in r.stdout and "final evaluation at step 4" in r.stdout
    assert json.loads((out / "eval.json").read_text())["step"] == 4
    r = run_script("train.py", *args, cwd=tmp_path)
    assert r.returncode == 0 and "already trained to step 4" in r.stdout  # evaluated: nothing left to do


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_bad_input_under_the_launcher_is_one_line_and_exit_code_2(tmp_path, processes):
    r = subprocess.run(gpt_launch(processes, "train.bogus=1"), cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "error: unknown config key 'train.bogus': did you mean 'train.beta2'? (see train.py --help)"
    ]


@pytest.mark.slow
def test_a_stalled_process_ends_the_job_with_a_line_naming_it(data_root, tmp_path):
    out = tmp_path / "run"
    proc = start(gpt_launch(2, *run_args(data_root, out, "train.collective_timeout_s=3")), tmp_path)
    lines = wait_for_step(proc)
    workers = {int(w.environ()["RANK"]): w for w in psutil.Process(proc.pid).children()}
    workers[1].suspend()  # SIGSTOP: alive, holding its connections, answering nothing
    try:
        workers[0].wait(timeout=120)  # rank 0 gives up by itself after the timeout and the roll call
    finally:
        # torch's agent then allows the stopped rank 30 s to end on SIGTERM before it kills it; spare the wait
        workers[1].kill()
    stdout, stderr = finish(proc, lines)
    assert proc.returncode == 1
    assert stderr.splitlines() == [
        "error: rank 1 did not answer for train.collective_timeout_s (3 s) (stopped, hung or gone); the job ends, "
        "resume it from the last checkpoint with resume=auto"
    ]
