"""One check of a GPU machine: the CUDA tests, the GPT-2 124M benchmark and a two-minute training.

    bash bench/gpu_check.sh OUT_DIR             # the usual way: sets up the environment, then runs this
    python bench/gpu_check.py OUT_DIR --dry-run # what it would run, and exit

Three stages, each a fresh process with W&B off, its output in OUT_DIR/<stage>.log:

1. tests: ``pytest tests/e2e/test_cuda.py`` (precisions and bitwise resume, compile, FSDP2, flash
   attention, cached generation, the planner against a real peak, memory metrics);
2. bench: ``python -m gpt.bench bench_gpt2_124m`` (bf16, compiled, context 1024): MFU, tokens/s,
   peak memory;
3. train: ``python train.py shakespeare_char`` for two minutes of training (``train.time_budget_s``),
   then its final evaluation.

The whole check keeps within ``--budget_s`` (480 s: each stage's limit is cut to what is left), and
writes OUT_DIR/report.json with the figures: test counts, MFU, tokens/s, peak GiB, the training's
final val loss and times. Exit status 0 when every stage succeeded, 1 otherwise (the report says
which), 2 with one line per problem when the machine is not ready (no GPU, torch older than 2.5, no
pytest, data not prepared, OUT_DIR not empty). It needs torch and accelerate, pytest for the tests,
and the built-in datasets prepared under data/ or ``datasets`` to prepare them
(``bench/offline_bundle.sh`` fetches what a machine without network lacks).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 470.0  # the whole check, on one H100 or H200 (8 minutes, with time for setting up)
TRAIN_S = 120.0  # the training's own budget (train.time_budget_s), start-up and final evaluation aside
TRAIN_OVERHEAD_S = 60.0  # start-up, compile, the final evaluation and checkpoint, on top of TRAIN_S
GIB = 2**30


@dataclass
class Stage:
    name: str
    argv: list[str]
    limit_s: float  # at most this long, and never past the check's budget


STAGES = ("tests", "bench", "train")


def stage(name: str, out: Path, train_s: float = TRAIN_S) -> Stage:
    py = sys.executable
    if name == "tests":
        return Stage(
            name, [py, "-m", "pytest", "-q", "-rs", "tests/e2e/test_cuda.py", f"--junitxml={out / 'tests.xml'}"], 270
        )
    if name == "bench":
        return Stage(name, [py, "-m", "gpt.bench", "bench_gpt2_124m", "--steps", "30", "--warmup", "5"], 150)
    train = [py, "train.py", "shakespeare_char", f"out_dir={out / 'shakespeare_char'}", "resume=false",
             f"train.time_budget_s={train_s:g}", "wandb.mode=disabled"]  # fmt: skip
    return Stage(name, train, train_s + TRAIN_OVERHEAD_S)


def missing(out: Path) -> list[str]:
    """What keeps the check from running here, one line each (empty when nothing does)."""
    import importlib.util

    problems = []
    try:
        import torch

        if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 5):
            problems.append(f"torch {torch.__version__} is older than 2.5")
        if not torch.cuda.is_available():
            problems.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    except ImportError:
        problems.append("torch is not installed")
    for module in ("accelerate", "pytest"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"{module} is not installed")
    sys.path.insert(0, str(ROOT))
    from gpt.prepared import is_prepared

    for name in ("shakespeare_char", "shakespeare_gpt2"):
        if not is_prepared(ROOT / "data" / name) and importlib.util.find_spec("datasets") is None:
            problems.append(
                f"data/{name} is not prepared and `datasets` is not installed to prepare it: "
                "run bench/offline_bundle.sh on a machine with network and copy data/ here"
            )
    if out.exists() and any(out.iterdir()):
        problems.append(f"{out} is not empty: give a new folder for this check's logs and report")
    return problems


def child_env() -> dict[str, str]:
    """The stages' environment: this source tree importable, W&B off, nothing fetched from the network."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env |= {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return env


def run_stage(stage: Stage, out: Path, deadline: float) -> dict[str, Any]:
    """Run one stage with its output in OUT/<name>.log; its exit status and wall-clock time."""
    limit = max(1.0, min(stage.limit_s, deadline - time.monotonic()))
    log = out / f"{stage.name}.log"
    start = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(stage.argv)}\n")
        f.flush()
        # its own process group: a stage out of time ends with everything it started (the tests' training
        # processes too), so that nothing holds the GPU into the next stage
        proc = subprocess.Popen(stage.argv, cwd=ROOT, env=child_env(), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            code: int | str = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = "timeout"
    seconds = round(time.monotonic() - start, 1)
    print(f"{stage.name}: {'ok' if code == 0 else f'FAILED ({code})'} in {seconds} s, log {log}", flush=True)
    return {"exit": code, "seconds": seconds, "limit_s": round(limit, 1), "log": log.name}


# ----------------------------------------------------------------------------------------------
# What the report reads from each stage's output


def test_counts(junit_xml: Path) -> dict[str, int] | None:
    """Passed, failed, errors and skipped from pytest's JUnit XML (None if pytest wrote none)."""
    if not junit_xml.is_file():
        return None
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(junit_xml).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    failed = totals["failures"] + totals["errors"]
    return {
        "passed": totals["tests"] - failed - totals["skipped"],
        "failed": totals["failures"],
        "errors": totals["errors"],
        "skipped": totals["skipped"],
    }


def last_json_line(log: Path) -> dict[str, Any] | None:
    """The last line of a log that is a JSON object (gpt.bench ends with its record)."""
    if not log.is_file():
        return None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def bench_figures(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    peak_mib = record.get("peak_memory_mib")
    return {
        "device_name": record.get("device_name"),
        "mfu": record.get("mfu"),
        "tokens_per_s": record.get("tokens_per_s"),
        "step_ms_median": record.get("step_ms_median"),
        "peak_memory_gib": None if peak_mib is None else round(peak_mib * 2**20 / GIB, 2),
        "batch": f"{record.get('micro_batch_size')} x {record.get('model', {}).get('block_size')}",
        "mixed_precision": record.get("mixed_precision"),
        "compile": record.get("compile"),
    }


def training_figures(run_dir: Path) -> dict[str, Any] | None:
    """Steps, the last windowed val loss, and the final full val loss, from the run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "eval/val/loss" in r]
    final = [r for r in records if "final/val/loss" in r]
    peaks = [r["memory/gpu_peak_gib"] for r in records if "memory/gpu_peak_gib" in r]
    return {
        "steps": max((r["step"] for r in records), default=0),
        "tokens": max((r.get("tokens", 0) for r in records), default=0),
        "val_loss": evals[-1]["eval/val/loss"] if evals else None,
        "final_val_loss": final[-1]["final/val/loss"] if final else None,
        "tokens_per_s": next((r["tokens_per_s"] for r in reversed(records) if "tokens_per_s" in r), None),
        "peak_memory_gib": max(peaks) if peaks else None,
    }


def machine() -> dict[str, Any]:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]}


def report(out: Path, results: dict[str, dict[str, Any]], total_s: float) -> dict[str, Any]:
    training = training_figures(out / "shakespeare_char")
    if training is not None:
        training["seconds"] = results["train"]["seconds"]  # the whole process: start-up and final evaluation too
    return {
        "machine": machine(),
        "ok": all(r["exit"] == 0 for r in results.values()),
        "total_seconds": round(total_s, 1),
        "stages": results,
        "tests": test_counts(out / "tests.xml"),
        "bench": bench_figures(last_json_line(out / "bench.log")),
        "train": training,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python bench/gpu_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("out_dir", help="where the logs and report.json go (created)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and exit")
    parser.add_argument("--budget_s", type=float, default=BUDGET_S, help=f"the whole check (default {BUDGET_S:g})")
    parser.add_argument("--only", nargs="+", choices=["tests", "bench", "train"], help="run only these stages")
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    names = [name for name in STAGES if not args.only or name in args.only]
    problems = missing(out)
    if args.dry_run:
        print(f"would run, from {ROOT}, with W&B off, in at most {args.budget_s:g} s, logs and report.json in {out}:")
        for name in names:
            s = stage(name, out)
            print(f"  {s.name} (at most {s.limit_s:g} s): {shlex.join(s.argv)}")
        for problem in problems:
            print(f"  (not ready here: {problem})")
        return 0
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + args.budget_s
    results = {}
    for name in names:
        # the training gets its two minutes, less what the stages before it overran into the budget
        train_s = max(10.0, min(TRAIN_S, deadline - time.monotonic() - TRAIN_OVERHEAD_S))
        results[name] = run_stage(stage(name, out, train_s), out, deadline)
    record = report(out, results, time.monotonic() - start)
    (out / "report.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("ok", "tests", "bench", "train")}), flush=True)
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
