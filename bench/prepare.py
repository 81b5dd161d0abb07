"""Preparation throughput and peak memory: GPT-2 BPE over a corpus made by repeating the shipped text.

    flock -x /tmp/cpu.lock python bench/prepare.py            # 100 MB corpus, 1 and 2 processes, 3 runs each

The corpus is a jsonl file of documents of about 4 KB (paragraphs of Tiny Shakespeare, grouped),
repeated until it holds --megabytes of text. Each run is ``python -m gpt.prepare`` in a fresh
process, as a user runs it. Its memory is sampled every 50 ms as the proportional set size (PSS)
summed over the process and its tokenizer processes, so that pages a forked process shares with
its parent count once. Throughput is tokens over the preparation's own clock (reading, tokenizing
and writing, without interpreter start-up); wall time includes start-up. A corpus a quarter the
size is prepared once more to show that peak memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from gpt.tokenizer import ASSETS

ROOT = Path(__file__).resolve().parent.parent

MB = 10**6


def make_corpus(path: Path, megabytes: float) -> tuple[int, int]:
    """A jsonl corpus of ~4 KB documents; returns (documents, bytes of text)."""
    paragraphs = [p for p in (ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n") if p]
    docs, current = [], ""
    for p in paragraphs:
        current = f"{current}\n\n{p}" if current else p
        if len(current) >= 4000:
            docs.append(current)
            current = ""
    docs.append(current)
    size = sum(len(d.encode("utf-8")) for d in docs)
    repeats = int(megabytes * MB // size) + 1
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeats):
            for d in docs:
                f.write(json.dumps({"id": r, "text": d}) + "\n")
    return repeats * len(docs), repeats * size


def tree_memory(process: psutil.Process) -> int:
    """Proportional set size of the process and its children, summed: pages a forked tokenizer
    process shares with its parent are counted once, not once per process as RSS would."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_full_info().pss
    return total


def run_prepare(corpus: Path, out: Path, num_proc: int) -> dict:
    cmd = [sys.executable, "-m", "gpt.prepare", "--input", str(corpus), "--out", str(out), "--tokenizer", "gpt2"]
    cmd += ["--num_proc", str(num_proc), "--val_fraction", "0.001", "--overwrite"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watched = psutil.Process(proc.pid)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, tree_memory(watched))
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed: {stdout}")
    manifest = json.loads((out / "prepare.json").read_text())
    tokens = manifest["train"] + manifest["val"]
    return {"tokens": tokens, "seconds": manifest["seconds"], "wall": wall, "peak_memory": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=100, help="Size of the corpus in MB of text (100).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per setting; the median is reported (3).")
    parser.add_argument("--procs", default="1,2", help="Tokenizer process counts to measure (1,2).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpt-bench-prepare-"))
    try:
        corpus = work / "corpus.jsonl"
        docs, size = make_corpus(corpus, args.megabytes)
        print(f"corpus: {docs:,} documents, {size / MB:.1f} MB of text, {corpus.stat().st_size / MB:.1f} MB of jsonl")
        print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
        results = {}
        for n in (int(x) for x in args.procs.split(",")):
            runs = [run_prepare(corpus, work / "out", n) for _ in range(args.repeats)]
            rates = [r["tokens"] / r["seconds"] for r in runs]
            rate = statistics.median(rates)
            results[n] = rate
            print(
                f"num_proc {n}: {runs[0]['tokens']:,} tokens; median {rate:,.0f} tokens/s "
                f"({statistics.median(size / r['seconds'] for r in runs) / MB:.2f} MB/s of text), "
                f"median wall {statistics.median(r['wall'] for r in runs):.1f} s, "
                f"peak memory (PSS) {max(r['peak_memory'] for r in runs) / 2**20:,.0f} MiB "
                f"(runs: {', '.join(f'{x:,.0f}' for x in rates)} tokens/s)"
            )
        if len(results) > 1:
            lo, hi = min(results), max(results)
            print(f"speed-up {hi} vs {lo} processes: {results[hi] / results[lo]:.2f}x")
        n = max(results)
        if args.megabytes < 40:  # too few documents for a val split at a quarter of the size
            return
        small = work / "small.jsonl"
        make_corpus(small, args.megabytes / 4)
        peak_small = run_prepare(small, work / "out", n)["peak_memory"]
        peak_full = run_prepare(corpus, work / "out", n)["peak_memory"]
        print(
            f"peak memory (PSS) with num_proc {n}: {peak_small / 2**20:,.0f} MiB for {args.megabytes / 4:.0f} MB, "
            f"{peak_full / 2**20:,.0f} MiB for {args.megabytes:.0f} MB of text"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
