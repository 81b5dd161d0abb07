"""bench/gpu_check.sh on a CPU: its dry run, the report it composes, and what an offline GPU machine
needs (training and the CUDA test module without wandb or datasets)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TINY, env, run_script


def load_gpu_check():
    """bench/gpu_check.py as a module (bench/ is not a package, and not put on sys.path)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


gpu_check = load_gpu_check()


def test_dry_run_lists_the_three_stages_and_writes_nothing(tmp_path):
    out = tmp_path / "check"
    r = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"],
        env=env(PYTHON=sys.executable), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "in at most 470 s" in lines[0] and str(out) in lines[0]
    assert "-m pytest -q -rs tests/e2e/test_cuda.py" in lines[1] and lines[1].lstrip().startswith("tests")
    assert "-m gpt.bench bench_gpt2_124m" in lines[2]
    assert "train.py shakespeare_char" in lines[3] and "train.time_budget_s=120" in lines[3]
    assert "not ready here: no CUDA GPU" in r.stdout  # says so, but a dry run still succeeds
    assert not out.exists()


def test_without_a_gpu_the_check_refuses_with_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path / "check")],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: no CUDA GPU is visible" in r.stderr


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_out_of_time_ends_with_every_process_it_started(tmp_path):
    grandchild = tmp_path / "grandchild.pid"
    starts_a_child = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"open({str(grandchild)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    stage = gpu_check.Stage("slow", [sys.executable, "-c", starts_a_child], limit_s=60)
    result = gpu_check.run_stage(stage, tmp_path, deadline=time.monotonic() + 8)  # the check's budget ends first
    assert result["exit"] == "timeout" and result["seconds"] < 30 and result["limit_s"] <= 8
    pid = int(grandchild.read_text())
    deadline = time.monotonic() + 10
    while alive(pid):
        assert time.monotonic() < deadline, "the stage's child process outlived it"
        time.sleep(0.1)
    assert (tmp_path / "slow.log").read_text().startswith("$ ")


def test_the_report_reads_test_counts_benchmark_and_training(tmp_path):
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="9"/></testsuites>'
    )
    bench = {"device_name": "NVIDIA H100 80GB HBM3", "mfu": 0.41, "tokens_per_s": 350000.0, "step_ms_median": 35.1,
             "peak_memory_mib": 10240.0, "micro_batch_size": 12, "model": {"block_size": 1024},
             "mixed_precision": "bf16", "compile": True}  # fmt: skip
    (tmp_path / "bench.log").write_text("model: ...\n" + json.dumps(bench) + "\n")
    run = tmp_path / "shakespeare_char"
    run.mkdir()
    records = [
        {"step": 250, "tokens": 4096000, "train/loss": 2.0, "eval/val/loss": 2.1, "memory/gpu_peak_gib": 2.5,
         "tokens_per_s": 1.0e6},
        {"step": 400, "tokens": 6553600, "train/loss": 1.5, "eval/val/loss": 1.6, "memory/gpu_peak_gib": 2.6,
         "tokens_per_s": 1.1e6},
        {"step": 400, "tokens": 6553600, "final/val/loss": 1.55},
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results = {name: {"exit": 0, "seconds": 10.0} for name in ("tests", "bench")} | {
        "train": {"exit": 0, "seconds": 150.0}
    }
    report = gpu_check.report(tmp_path, results, 170.0)
    assert report["ok"] and report["total_seconds"] == 170.0
    assert report["tests"] == {"passed": 5, "failed": 2, "errors": 1, "skipped": 1}
    assert report["bench"]["mfu"] == 0.41 and report["bench"]["tokens_per_s"] == 350000.0
    assert report["bench"]["peak_memory_gib"] == 10.0 and report["bench"]["batch"] == "12 x 1024"
    assert report["train"] == {
        "steps": 400, "tokens": 6553600, "val_loss": 1.6, "final_val_loss": 1.55, "tokens_per_s": 1.1e6,
        "peak_memory_gib": 2.6, "seconds": 150.0,
    }  # fmt: skip
    results["bench"]["exit"] = "timeout"
    assert not gpu_check.report(tmp_path, results, 170.0)["ok"]


def test_training_and_the_cuda_tests_need_neither_wandb_nor_datasets(tmp_path, data_root):
    """What a GPU machine without network may lack: both modules fail to import here."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for module in ("wandb", "datasets"):
        (blocked / f"{module}.py").write_text(f"raise ImportError('{module} is not installed on this machine')\n")
    path = f"{blocked}:{ROOT}"
    for module in ("wandb", "datasets"):
        refused = subprocess.run([sys.executable, "-c", f"import {module}"], env=env(PYTHONPATH=path), timeout=60)
        assert refused.returncode != 0  # the blocker works
    out = tmp_path / "run"
    r = run_script(
        "train.py", *TINY, "train.max_steps=4", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}",
        PYTHONPATH=path, WANDB_MODE="disabled",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = run_script("sample.py", "--out_dir", str(out), "--max_new_tokens", "5", PYTHONPATH=path)
    assert s.returncode == 0, s.stderr[-3000:]
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", str(ROOT / "tests" / "e2e" / "test_cuda.py")],
        cwd=ROOT, env=env(PYTHONPATH=path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert collect.returncode == 0, collect.stdout[-3000:]
    assert "ImportError" not in collect.stdout
