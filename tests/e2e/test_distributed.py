"""Several processes over gloo on this machine, launched the way users launch them.

The same global batch split as 1 process x 4 accumulation steps, 2 x 2, 4 x 1, and over two
"machines" on loopback must train the same model; a failing rank must end the job; FSDP is refused
where accelerate cannot run it, and our FSDP policy and sharded checkpoints are exercised with
torch's own FSDP2 on CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt.checkpoint import complete_checkpoints, latest_checkpoint, verify

from conftest import CPU_CONFIG, HELPERS, ROOT, TINY, accelerate_launch, env, free_port, metrics, output, run_script

# A global batch of 8 sequences in micro-batches of 2: 1 process x 4 accumulation steps, 2 x 2, 4 x 1.
SPLIT = [*TINY, "train.micro_batch_size=2", "train.log_interval=1", "train.mixed_precision=no"]


def run_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [*SPLIT, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", *extra]


def losses(out: Path, key: str = "train/loss") -> dict[int, float]:
    return {m["step"]: m[key] for m in metrics(out) if key in m}


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(out) / "model" / "model.safetensors"))


def assert_same_training(out: Path, reference: Path) -> None:
    """The same loss at every step and the same final weights, up to float summation order."""
    for key in ("train/loss", "eval/train/loss", "eval/val/loss"):
        got, want = losses(out, key), losses(reference, key)
        assert got.keys() == want.keys() and len(got) > 0
        for step in want:
            assert got[step] == pytest.approx(want[step], abs=1e-5), f"{key} differs at step {step}"
    got, want = final_weights(out), final_weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        a, b = got[name], want[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias adds q.b to every score of a query, which the softmax cancels: its gradient is
            # zero in exact arithmetic, so AdamW's normalised steps on it are rounding noise that differs
            # with the summation order. Compare the query and value biases.
            C = a.numel() // 3
            a, b = torch.cat([a[:C], a[2 * C :]]), torch.cat([b[:C], b[2 * C :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_root) -> Path:
    """The reference: one process, 4 accumulation steps."""
    out = tmp_path_factory.mktemp("split") / "1x4"
    r = run_script("train.py", *run_args(data_root, out))
    assert r.returncode == 0, output(r)
    assert "1 process(es)" in r.stdout and "x 4 accumulation steps" in r.stdout
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "processes, extra",
    # recomputed blocks, and the loss in pieces of 16 tokens (automatic only for large vocabularies), under DDP
    [(2, []), (4, []), (2, ["train.activation_checkpointing=true", "model.loss_chunk=16"])],
    ids=["2", "4", "2-recomputed"],
)
def test_processes_times_accumulation_trains_the_same_model(processes, extra, one_process, data_root, tmp_path):
    out = tmp_path / f"{processes}x{4 // processes}"
    r = accelerate_launch(
        "--config_file", CPU_CONFIG, "--num_processes", str(processes), "--main_process_port", str(free_port()),
        str(HELPERS / "train_and_fingerprint.py"), *run_args(data_root, out, *extra), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, output(r)
    assert f"{processes} process(es)" in r.stdout and f"x {4 // processes} accumulation steps" in r.stdout
    assert_same_training(out, one_process)
    fingerprints = {(out / f"weights-{rank}.txt").read_text() for rank in range(processes)}
    assert len(fingerprints) == 1  # every rank ends with the same weights
    for folder in complete_checkpoints(out):  # each holds every process's files, checksummed
        verify(folder)
        listed = json.loads((folder / "manifest.json").read_text())["files"]
        assert {f"random_states_{rank}.pkl" for rank in range(processes)} <= listed.keys()


def launch_in_background(*args: str, log: Path, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env(), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int | None]:
    """Wait for every process; once one fails, end the others (a machine whose peer died would wait
    for it at the rendezvous until its own timeout) so the test reports the failure at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and the training processes it started
            p.wait()
    return [p.returncode for p in procs]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["multi_node_static.yaml", "multi_node_c10d.yaml"])
def test_two_machines_on_loopback_train_the_same_model(config, one_process, data_root, tmp_path):
    """Two launchers, one process each, meeting at 127.0.0.1 the way two machines meet."""
    out, port = tmp_path / "two-machines", str(free_port())

    def machine(rank: int) -> list[str]:
        return [
            "--config_file", str(ROOT / "launch" / config), "--num_machines", "2", "--num_processes", "2",
            "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            str(ROOT / "train.py"), *run_args(data_root, out),
        ]  # fmt: skip

    launchers = [launch_in_background(*machine(r), log=tmp_path / f"machine-{r}.log", cwd=tmp_path) for r in (0, 1)]
    codes = wait_all(launchers, timeout=300)
    logs = [(tmp_path / f"machine-{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "2 process(es)" in logs[0] and "x 2 accumulation steps" in logs[0]
    assert_same_training(out, one_process)


@pytest.mark.slow
def test_machines_sharing_a_data_root_prepare_a_missing_builtin_dataset_once(tmp_path):
    """Two "machines" (each process is its machine's local main) and one data.root without the set."""
    shared, port = tmp_path / "shared-data", str(free_port())
    args = [*SPLIT, "train.max_steps=2", "train.eval_windows=2", "train.final_eval=false",
            f"data.root={shared}", "data.dataset=shakespeare_char"]  # fmt: skip

    def machine(rank: int) -> list[str]:
        return [
            "--config_file", str(ROOT / "launch" / "multi_node_static.yaml"), "--num_machines", "2",
            "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", port, str(ROOT / "train.py"), *args, f"out_dir={tmp_path / 'run'}",
        ]  # fmt: skip

    launchers = [launch_in_background(*machine(r), log=tmp_path / f"machine-{r}.log", cwd=tmp_path) for r in (0, 1)]
    codes = [p.wait(timeout=300) for p in launchers]
    logs = [(tmp_path / f"machine-{rank}.log").read_text() for rank in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    prepared = [line for log in logs for line in log.splitlines() if line.startswith("prepared ")]
    assert len(prepared) == 1 and prepared[0].startswith(f"prepared {shared / 'shakespeare_char'}:"), logs


@pytest.mark.slow
def test_bf16_on_cpu_trains_and_every_rank_ends_with_the_same_weights(tmp_path, data_root):
    """bf16 from the launch (train.mixed_precision=auto takes it), over two processes; kept on CPUs where
    bf16 is emulated too (train.cpu_bf16=always), so that every machine tests bf16."""
    out = tmp_path / "bf16"
    r = accelerate_launch(
        "--config_file", CPU_CONFIG, "--num_processes", "2", "--main_process_port", str(free_port()),
        "--mixed_precision", "bf16", str(HELPERS / "train_and_fingerprint.py"), *TINY, "train.micro_batch_size=2",
        f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "train.cpu_bf16=always", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, output(r)
    assert "2 process(es) on cpu, mixed precision bf16" in r.stdout and "x 2 accumulation steps" in r.stdout
    assert (out / "weights-0.txt").read_text() == (out / "weights-1.txt").read_text()
    train = list(losses(out).values())
    assert train[-1] < train[0] - 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, how",
    [("accelerate", "crash"), ("torchrun", "exit")],
    ids=["accelerate-launch-rank-raises", "torchrun-rank-dies"],
)
def test_a_failing_rank_ends_the_job_quickly_with_its_error(launcher, how, tmp_path, data_root):
    script = [str(ROOT / "train.py"), *run_args(data_root, tmp_path / "failing")]
    if launcher == "accelerate":
        cmd = ["-m", "accelerate.commands.launch", "--config_file", CPU_CONFIG, "--num_processes", "2"]
        cmd += ["--main_process_port", str(free_port()), *script]
    else:
        cmd = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), *script]
    start = time.monotonic()
    fault = f"train.step@3:{how}:rank=1"  # rank 1 fails after step 3 (gpt.faults)
    r = subprocess.run(
        [sys.executable, *cmd], cwd=tmp_path, env=env(GPT_FAULT=fault),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert r.returncode != 0
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end after a rank failed"
    if how == "crash":
        assert "RuntimeError: injected crash at train.step step 3" in r.stderr
    else:
        assert "exitcode  : 13" in r.stderr  # the launcher names the rank that died and its exit code
    assert max(losses(tmp_path / "failing")) <= 3  # no rank trained on past the failure


# ----------------------------------------------------------------------------------------------
# FSDP


@pytest.mark.slow
def test_fsdp_launch_without_gpus_is_refused_with_one_line(tmp_path, data_root):
    r = accelerate_launch(
        "--config_file", str(ROOT / "launch" / "fsdp.yaml"), "--num_processes", "2",
        "--main_process_port", str(free_port()), str(ROOT / "train.py"), *run_args(data_root, tmp_path / "fsdp"),
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "asked for FSDP but accelerate set up MULTI_CPU" in errors[0], output(r)
    assert "launch/cpu_multiprocess.yaml" in errors[0]
    assert not (tmp_path / "fsdp" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_fsdp2_bf16_step_reduces_and_keeps_gradients_and_loss_in_fp32(tmp_path):
    r = accelerate_launch(
        "--config_file", CPU_CONFIG, "--num_processes", "2", "--main_process_port", str(free_port()),
        str(HELPERS / "fsdp_precision.py"), str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, output(r)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["block_output"] == ["torch.bfloat16"] * 2  # the compute is bf16 ...
    assert report["reduced"] == ["torch.float32"] * 3  # ... the reduce-scatter of every unit (once per step) fp32
    assert report["grads"] == report["params"] == ["torch.float32"]
    assert report["loss"] == ["torch.float32"] * 2  # from fp32 logits, and the output is not cast back


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # the single-process read below is meant
def test_fsdp2_on_cpu_shards_per_block_and_a_sharded_checkpoint_exports_to_sample(tmp_path, data_root):
    out = tmp_path / "fsdp"
    r = accelerate_launch(
        "--config_file", CPU_CONFIG, "--num_processes", "2", "--main_process_port", str(free_port()),
        str(HELPERS / "fsdp_shard_and_export.py"), str(data_root / "tiny"), str(out), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, output(r)
    report = json.loads((out / "report.json").read_text())
    assert report["units"] == ["", "blocks.0", "blocks.1"]  # the root, then one unit per Block
    for name, shard in report["shards"].items():  # every parameter split in two along its first dimension
        assert shard["dtensor"] and shard["local"][0] == (shard["global"][0] + 1) // 2, name
    assert report["losses"][-1] < report["losses"][0] - 0.2
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):  # one file per process, and the index
        assert {f"{part}/__0_0.distcp", f"{part}/__1_0.distcp", f"{part}/.metadata"} <= set(report["files"])
    assert report["resumed_equals_trained"] and report["optimizer_steps_restored"] == [6.0]

    # The sharded files hold the whole model: read them in one process, without any process group.
    import torch.distributed.checkpoint as dcp

    exported = load_file(str(out / "export" / "model.safetensors"))
    state = {"model": {name: torch.empty_like(t) for name, t in exported.items()}}
    dcp.load(state, checkpoint_id=out / "checkpoint" / "pytorch_model_fsdp_0")
    for name in exported:
        assert torch.equal(state["model"][name], exported[name]), name

    s = run_script("sample.py", "--out_dir", str(out / "export"), "--max_new_tokens", "20", "--num_samples", "1")
    assert s.returncode == 0, s.stderr
    assert "--- sample 1 of 1 ---" in s.stdout


# ----------------------------------------------------------------------------------------------
# SLURM


def slurm_env(tmp_path: Path, nodes: int, **extra: str) -> dict[str, str]:
    """The variables SLURM sets in a batch job, with fake srun/scontrol first on PATH."""
    variables = {
        "PATH": f"{HELPERS / 'fake_slurm'}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_JOB_NODELIST": "127.0.0.1",
        "SLURM_GPUS_ON_NODE": "1", "SLURM_SUBMIT_DIR": str(ROOT), "FAKE_SLURM_LOG": str(tmp_path / "scontrol.log"),
    }  # fmt: skip
    return env(**(variables | extra))


def test_slurm_script_derives_ranks_address_and_port_from_the_allocation(tmp_path):
    e = slurm_env(tmp_path, nodes=3, SLURM_JOB_NODELIST="gpu-a,gpu-b,gpu-c", SLURM_GPUS_ON_NODE="8")
    r = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm.sbatch"), "--dry-run", "shakespeare_char", "out_dir=/shared/run 1"],
        env=e, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    for node, line in enumerate(lines):
        assert line == (
            f"node {node}: python -m gpt.launch --config_file launch/multi_node_static.yaml --num_machines 3 "
            f"--num_processes 24 --machine_rank {node} --main_process_ip gpu-a --main_process_port 24242 "
            r"train.py shakespeare_char out_dir=/shared/run\ 1 resume=auto"
        )
    outside = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm.sbatch"), "--dry-run"], env=env(), capture_output=True, text=True
    )
    assert outside.returncode != 0 and "not inside a SLURM allocation" in outside.stderr


@pytest.mark.parametrize(
    "nodelist, main_host", [("gpu[07-09,12],cpu1", "gpu07"), ("n-[3-4]-ib", "n-3-ib"), ("a,b[1-2]", "a")]
)
def test_slurm_dry_run_works_without_scontrol(nodelist, main_host):
    e = env(SLURM_JOB_ID="7", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST=nodelist, SLURM_GPUS_ON_NODE="4")
    assert subprocess.run(["bash", "-c", "command -v scontrol"], env=e).returncode != 0  # none on this PATH
    r = subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm.sbatch"), "--dry-run", "shakespeare_char"],
        env=e, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [line.split("--main_process_ip ")[1].split()[0] for line in r.stdout.splitlines()] == [main_host] * 2


@pytest.mark.parametrize("cpus", [{"SLURM_CPUS_PER_TASK": "32"}, {"SLURM_CPUS_ON_NODE": "16"}])
def test_slurm_script_gives_each_node_task_the_cpus_of_the_allocation(cpus, tmp_path):
    """srun does not inherit --cpus-per-task from sbatch (Slurm 22.05 and later): the script passes it."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text('#!/bin/bash\necho "launcher on node $SLURM_NODEID"\n')  # the node's launcher
    (fake_bin / "python").chmod(0o755)
    e = slurm_env(tmp_path, nodes=2, FAKE_SRUN_LOG=str(tmp_path / "srun.log"), **cpus)
    e["PATH"] = f"{fake_bin}{os.pathsep}{e['PATH']}"
    r = subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "x"], env=e, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(line for line in r.stdout.splitlines() if line.startswith("launcher")) == [
        "launcher on node 0", "launcher on node 1"
    ]  # fmt: skip
    options = (tmp_path / "srun.log").read_text().split()
    assert f"--cpus-per-task={next(iter(cpus.values()))}" in options and "--ntasks-per-node=1" in options


def start_slurm_job(cmd: list[str], e: dict[str, str], cwd: Path, log: Path, out: Path) -> subprocess.Popen:
    """Start the batch script and wait until training has logged a step after any resume."""
    logged = len(metrics(out)) if (out / "metrics.jsonl").exists() else 0
    job = subprocess.Popen(cmd, env=e, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and len(metrics(out)) > logged):
        assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    return job


@pytest.mark.slow
def test_slurm_script_stops_on_usr1_requeues_and_the_requeued_job_resumes(tmp_path, data_root):
    """Two "nodes" on this machine (srun and scontrol faked): SIGUSR1 before the time limit makes
    every training process save and stop, the job is requeued, and running it again continues;
    SIGTERM (preemption) saves and stops the same way, with exit code 75 and no requeue of our own."""
    out = tmp_path / "slurm"
    args = run_args(data_root, out, "train.max_steps=100", "train.eval_interval=1000", "train.checkpoint_interval=1000")
    e = slurm_env(tmp_path, nodes=2, MAIN_PORT=str(free_port()))
    cmd = ["bash", str(ROOT / "launch" / "slurm.sbatch"), *args]
    log = tmp_path / "job-1.log"
    job = start_slurm_job(cmd, e, tmp_path, log, out)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
    assert job.wait(timeout=120) == 0, log.read_text()[-3000:]
    first = log.read_text()
    stopped_at = int(latest_checkpoint(out).name.split("-")[1])
    assert 0 < stopped_at < 100, first[-3000:]
    assert f"stopped by SIGUSR1 at step {stopped_at}" in first and "Traceback" not in first
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]

    log = tmp_path / "job-2.log"
    job = start_slurm_job(cmd, e, tmp_path, log, out)
    job.send_signal(signal.SIGTERM)  # preemption: SLURM requeues the job itself
    assert job.wait(timeout=120) == 75, log.read_text()[-3000:]
    second = log.read_text()
    assert "resumed from" in second and f"at step {stopped_at}" in second
    preempted_at = int(latest_checkpoint(out).name.split("-")[1])
    assert stopped_at < preempted_at < 100 and f"stopped by SIGUSR1 at step {preempted_at}" in second
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]  # no requeue of our own

    third = subprocess.run(cmd, env=e, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, output(third)
    assert f"at step {preempted_at}" in third.stdout and latest_checkpoint(out).name == "step-0000100"
    logged = [m["step"] for m in metrics(out) if "train/loss" in m]
    assert logged == list(range(1, 101))  # every step logged once, none repeated
    assert (tmp_path / "scontrol.log").read_text().splitlines() == ["requeue 4242"]  # no second requeue
