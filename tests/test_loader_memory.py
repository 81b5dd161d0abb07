"""Resident memory of the loader stays flat however large the token files and however long the run."""

import struct
import sys

import psutil
import pytest

import gpt.token_files
from gpt.data import HEADER_SIZE, BatchStream, TokenStream

TOKENS = 2**31  # a 4 GiB file of uint16 tokens
BLOCK, BATCH, STEPS = 1024, 12, 20_000
MiB = 2**20


def sparse_token_file(path, num_tokens: int) -> None:
    """A token file (header as documented in gpt.token_files) whose tokens are a hole: no disk space, all zeros."""
    identity = b"gpt2"
    head = struct.pack("<8sIIQII", b"GPTTOKEN", 1, 2, num_tokens, 50257, len(identity)) + identity
    with open(path, "wb") as f:
        f.write(head.ljust(HEADER_SIZE, b"\0"))
        f.truncate(HEADER_SIZE + 2 * num_tokens)


def rss_growth_while_training_reads(stream: TokenStream, steps: int) -> list[int]:
    """Resident memory above the start, every 1,000 steps of the real batch stream."""
    process = psutil.Process()
    batches = BatchStream(
        stream, seed=0, block_size=BLOCK, batch_size=BATCH, micro_batch_size=BATCH, rank=0, world=1, start_step=0
    )
    start, growth = process.memory_info().rss, []
    try:
        for step in range(1, steps + 1):
            for x, _ in batches.next_step():
                assert x.shape == (BATCH, BLOCK)
            if step % 1000 == 0:
                growth.append(process.memory_info().rss - start)
    finally:
        batches.close()
    return growth


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="resident memory of file mappings is measured as Linux counts it")
def test_resident_memory_stays_flat_on_a_4gb_file(tmp_path, monkeypatch):
    path = tmp_path / "train-000000.tok"
    sparse_token_file(path, TOKENS)
    stream = TokenStream([path])
    assert path.stat().st_size > 4 * 2**30
    growth = rss_growth_while_training_reads(stream, STEPS)
    # 20,000 batches touch 240,000 windows, each on its own pages (over 1 GB in all); what stays mapped
    # is bounded by the release budget (64 MiB), at every point of the run.
    assert max(growth) < 128 * MiB, [g // MiB for g in growth]
    assert growth[-1] < growth[len(growth) // 2] + 64 * MiB  # no drift with the number of steps

    # The same reads without the periodic release keep every page they touch mapped (6,000 batches:
    # at least 72,000 pages, 288 MiB): the bound above is one the loader would break without it.
    monkeypatch.setattr(gpt.token_files, "RESIDENT_BUDGET", 1 << 62)
    stream.release()
    growth = rss_growth_while_training_reads(TokenStream([path]), 6000)
    assert growth[-1] > 256 * MiB, [g // MiB for g in growth]
