"""Loader throughput and resident memory: 10,000 batches of 12 x 1024 tokens from a 4.4 GB token file.

    flock -x /tmp/cpu.lock python bench/loader.py

Writes a token file of random GPT-2 ids (2.2 billion tokens, 4.4 GB) under /tmp with the real
writer, evicts it from the page cache (posix_fadvise DONTNEED), then reads batches through
``BatchStream``, the path training uses (background thread, random windows, int64 tensors), in two
passes: the first from disk, the second over the same windows again (now in the page cache). It
reports batches per second (median over blocks of 1,000 batches, and overall) and the process's
resident memory every 1,000 batches. The file is deleted at the end.

The rate training needs is computed from a published figure, not measured here: GPT-2 124M
trained at 3 million tokens/s on 8 H100s (J. Schwartz, "Scaling GPT-2 training",
https://jjschwartz.github.io/blog/scaling-gpt2.html), i.e. 375,000 tokens/s per H100, which is
30.5 batches/s of 12 x 1024 tokens.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from gpt.data import BatchStream, TokenFileWriter, TokenStream

H100_TOKENS_PER_S = 3_000_000 / 8  # published, GPT-2 124M on 8 H100s (see the docstring)
BLOCK, BATCH = 1024, 12
MiB = 2**20


def write_random_tokens(path: Path, num_tokens: int, chunk: int = 1 << 26) -> None:
    rng = np.random.default_rng(0)
    with TokenFileWriter(path, vocab_size=50257, identity="gpt2") as writer:
        for start in range(0, num_tokens, chunk):
            writer.write(rng.integers(0, 50257, size=min(chunk, num_tokens - start), dtype=np.uint16))


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_batches(stream: TokenStream, batches: int, block: int = 1000) -> dict:
    process = psutil.Process()
    loader = BatchStream(
        stream, seed=0, block_size=BLOCK, batch_size=BATCH, micro_batch_size=BATCH, rank=0, world=1, start_step=0
    )
    rss_start = process.memory_info().rss
    rates, rss = [], []
    begin = t = time.perf_counter()
    try:
        for i in range(1, batches + 1):
            for x, y in loader.next_step():
                assert x.shape == y.shape == (BATCH, BLOCK)
            if i % block == 0:
                now = time.perf_counter()
                rates.append(block / (now - t))
                rss.append(process.memory_info().rss)
                t = now
    finally:
        loader.close()
    total = time.perf_counter() - begin
    return {"median": statistics.median(rates), "overall": batches / total, "rss_start": rss_start, "rss": rss}


def report(name: str, r: dict, needed: float) -> None:
    print(
        f"{name}: median {r['median']:,.0f} batches/s over blocks of 1,000 (overall {r['overall']:,.0f}); "
        f"{r['median'] / needed:,.0f}x the {needed:.1f} batches/s one H100 consumes"
    )
    print(
        f"  resident memory: {r['rss_start'] / MiB:,.0f} MiB at start, {r['rss'][-1] / MiB:,.0f} MiB after "
        f"{len(r['rss']) * 1000:,} batches, at most {max(r['rss']) / MiB:,.0f} MiB "
        f"(every 1,000 batches: {', '.join(f'{x / MiB:.0f}' for x in r['rss'])})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2_200_000_000, help="Tokens in the file (2.2e9: 4.4 GB).")
    parser.add_argument("--batches", type=int, default=10_000, help="Batches per pass (10,000).")
    parser.add_argument("--dir", default="/tmp", help="Where to write the file (deleted afterwards).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpt-bench-loader-", dir=args.dir))
    try:
        path = work / "train-000000.tok"
        t = time.perf_counter()
        write_random_tokens(path, args.tokens)
        print(
            f"wrote {path}: {args.tokens:,} tokens, {path.stat().st_size / 1e9:.2f} GB "
            f"in {time.perf_counter() - t:.0f} s"
        )
        print(f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
        needed = H100_TOKENS_PER_S / (BATCH * BLOCK)
        stream = TokenStream([path])
        evict(path)
        report("first pass, from disk", read_batches(stream, args.batches), needed)
        report("second pass, same windows from the page cache", read_batches(stream, args.batches), needed)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
