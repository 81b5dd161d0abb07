import json
import struct
import subprocess
import sys

import numpy as np
import psutil
import pytest

import gpt.data
import gpt.token_files
from gpt.data import (
    HEADER_SIZE,
    BatchStream,
    DocumentStarts,
    TokenFile,
    TokenStream,
    step_window_starts,
    write_token_file,
)
from gpt.errors import UserError

from conftest import ROOT, TINY, assert_one_line, env, run_script


def test_token_file_round_trip_uint16(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65, size=1000)
    path = write_token_file(tmp_path / "a.tok", tokens, vocab_size=65, identity="char-65-abc")
    f = TokenFile(path)
    assert (f.num_tokens, f.vocab_size, f.identity, f.dtype.itemsize) == (1000, 65, "char-65-abc", 2)
    assert isinstance(f.tokens, np.memmap)
    np.testing.assert_array_equal(f.tokens, tokens)
    assert path.stat().st_size == HEADER_SIZE + 2000


def test_token_file_uses_uint32_for_large_vocabularies(tmp_path):
    tokens = np.array([0, 70_000, 99_999, 5])
    f = TokenFile(write_token_file(tmp_path / "big.tok", tokens, vocab_size=100_000, identity="synthetic"))
    assert f.dtype.itemsize == 4
    np.testing.assert_array_equal(f.tokens, tokens)


def test_out_of_range_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match="token ids"):
        write_token_file(tmp_path / "x.tok", [0, 65], vocab_size=65, identity="x")
    assert not (tmp_path / "x.tok").exists() and not (tmp_path / "x.tok.partial").exists()


def test_truncated_file_is_detected(tmp_path):
    path = write_token_file(tmp_path / "a.tok", np.arange(100), vocab_size=100, identity="x")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or corrupt"):
        TokenFile(path)


def test_bad_magic_is_detected(tmp_path):
    path = tmp_path / "a.tok"
    path.write_bytes(b"\x00" * 1000)  # e.g. a nanoGPT .bin file
    with pytest.raises(UserError, match="not a token file"):
        TokenFile(path)


def test_windows_cross_file_boundaries(tmp_path):
    tokens = np.arange(250) % 200
    paths = [
        write_token_file(tmp_path / f"train-{i}.tok", tokens[lo:hi], vocab_size=200, identity="x")
        for i, (lo, hi) in enumerate([(0, 100), (100, 130), (130, 250)])
    ]
    stream = TokenStream(paths)
    assert len(stream) == 250
    for start in (0, 95, 99, 100, 125, 129, 200):
        np.testing.assert_array_equal(stream.window(start, 40)[: 250 - start], tokens[start : start + 40])
    starts = np.array([90, 120, 5])
    np.testing.assert_array_equal(stream.windows(starts, 20), np.stack([tokens[s : s + 20] for s in starts]))


def test_shards_from_different_tokenizers_are_refused(tmp_path):
    a = write_token_file(tmp_path / "a.tok", [1, 2], vocab_size=10, identity="one")
    b = write_token_file(tmp_path / "b.tok", [1, 2], vocab_size=10, identity="two")
    with pytest.raises(UserError, match="prepare them together"):
        TokenStream([a, b])


def collect(stream_file, world, micro, batch, steps):
    """Windows (as start offsets) each rank sees per step, for a split of the global batch."""
    seen = {}
    for rank in range(world):
        bs = BatchStream(
            stream_file,
            seed=3,
            block_size=8,
            batch_size=batch,
            micro_batch_size=micro,
            rank=rank,
            world=world,
            start_step=0,
        )
        for step in range(steps):
            for x, y in bs.next_step():
                np.testing.assert_array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())  # targets are inputs shifted
                seen.setdefault(step, []).extend(x[:, 0].tolist())
        bs.close()
    return seen


def test_every_split_of_the_global_batch_sees_the_same_windows(tmp_path):
    tokens = np.random.default_rng(1).permutation(60_000) % 60_000  # distinct tokens identify windows
    stream = TokenStream([write_token_file(tmp_path / "t.tok", tokens, vocab_size=60_000, identity="x")])
    one = collect(stream, world=1, micro=2, batch=8, steps=3)  # 1 process x 4 accumulation steps
    two = collect(stream, world=2, micro=2, batch=8, steps=3)  # 2 x 2
    four = collect(stream, world=4, micro=2, batch=8, steps=3)  # 4 x 1
    for step in range(3):
        expected = tokens[step_window_starts(3, step, 8, 60_000, 8)]
        for split in (one, two, four):
            assert sorted(split[step]) == sorted(expected.tolist())
    assert one[0] != one[1]  # successive steps draw new windows


def test_batch_stream_resumes_mid_run(tmp_path):
    tokens = np.arange(5000) % 1000
    stream = TokenStream([write_token_file(tmp_path / "t.tok", tokens, vocab_size=1000, identity="x")])
    kw = dict(seed=7, block_size=16, batch_size=4, micro_batch_size=2, rank=0, world=1)
    full = BatchStream(stream, start_step=0, **kw)
    batches = [x for _ in range(5) for x, _ in full.next_step()]
    full.close()
    resumed = BatchStream(stream, start_step=3, **kw)
    again = [x for _ in range(2) for x, _ in resumed.next_step()]
    resumed.close()
    for a, b in zip(batches[6:], again, strict=True):
        assert (a == b).all()


def test_too_short_corpus_is_refused(tmp_path):
    stream = TokenStream([write_token_file(tmp_path / "t.tok", np.arange(10), vocab_size=10, identity="x")])
    with pytest.raises(UserError, match="at least block_size \\+ 1"):
        stream.check_fits(16)


def corrupt(path, position: int, token_id: int, record_max: bool = True) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 2 * position : HEADER_SIZE + 2 * position + 2] = token_id.to_bytes(2, "little")
    if not record_max:
        data[HEADER_SIZE - 4 : HEADER_SIZE] = bytes(4)  # as files written before the largest id was recorded
    path.write_bytes(bytes(data))


def test_ids_beyond_the_vocabulary_are_found_at_open_and_in_every_window(tmp_path):
    tokens = np.arange(200_000) % 65
    good = write_token_file(tmp_path / "good.tok", tokens, 65, "x")
    assert len(TokenFile(good)) == 200_000
    old = write_token_file(tmp_path / "old.tok", tokens, 65, "x")
    corrupt(old, 0, 0, record_max=False)
    assert len(TokenFile(old)) == 200_000  # files without a recorded largest id still open

    lying = write_token_file(tmp_path / "lying.tok", tokens, 65, "x")
    corrupt(lying, 3, 300, record_max=False)  # inside the sample read at open
    with pytest.raises(UserError, match=f"{lying} holds token id 300 \\(at token 3\\), beyond its vocabulary of 65"):
        TokenFile(lying)
    recorded = tmp_path / "recorded.tok"
    recorded.write_bytes(
        good.read_bytes()[: HEADER_SIZE - 4] + (1000).to_bytes(4, "little") + tokens.astype("<u2").tobytes()
    )
    with pytest.raises(UserError, match=f"{recorded} holds token id 999, beyond its vocabulary"):
        TokenFile(recorded)

    hidden = write_token_file(tmp_path / "hidden.tok", tokens, 65, "x")
    corrupt(hidden, 105_000, 300)  # between the pieces sampled at open
    stream = TokenStream([good, hidden])
    with pytest.raises(UserError, match=f"{hidden} holds token id 300 \\(at token 105,000\\)"):
        stream.windows(np.array([0, 200_000 + 104_990]), 20)
    with pytest.raises(UserError, match=f"{hidden} holds token id 300"):
        stream.window(200_000 + 104_999, 5)


def test_train_names_the_token_file_with_a_bad_id(tmp_path, data_root):
    import shutil

    shutil.copytree(data_root / "tiny", tmp_path / "bad")
    val = tmp_path / "bad" / "val-000000.tok"
    corrupt(val, 10, 999)
    r = run_script("train.py", *TINY, f"data.root={tmp_path}", "data.dataset=bad", cwd=tmp_path)
    assert_one_line(r, f"{val} holds token id 999 (at token 10), beyond its vocabulary")


EOT = 9


def two_shards(tmp_path) -> TokenStream:
    # documents: [1 2 3 EOT] [4 5 EOT] [6 7 8 1 2 EOT] | next shard: [3 4 5 6 EOT] [7 8 1 EOT]
    first = write_token_file(tmp_path / "train-000.tok", [1, 2, 3, EOT, 4, 5, EOT, 6, 7, 8, 1, 2, EOT], 10, "t")
    second = write_token_file(tmp_path / "train-001.tok", [3, 4, 5, 6, EOT, 7, 8, 1, EOT], 10, "t")
    return TokenStream([first, second])


@pytest.mark.parametrize("scan", [2, 3, 1 << 23])
def test_document_starts_are_file_starts_and_the_tokens_after_end_of_text(tmp_path, monkeypatch, scan):
    monkeypatch.setattr(DocumentStarts, "SCAN_TOKENS", scan)  # pieces that cut documents anywhere
    stream = two_shards(tmp_path)
    docs = DocumentStarts(stream, EOT, block_size=4)
    # every start: 0, 4, 7, 13 (second file), 18; 22 is past the last start with 5 tokens after it (22 > 17)
    assert docs.starts.tolist() == [0, 4, 7, 13] and docs.starts.dtype == np.uint32


def test_every_window_starts_a_document_and_the_stream_is_a_function_of_seed_and_step(tmp_path):
    stream = two_shards(tmp_path)
    docs = DocumentStarts(stream, EOT, block_size=3)
    starts = docs.step_starts(seed=1, step=5, batch_size=64)
    np.testing.assert_array_equal(starts, docs.step_starts(seed=1, step=5, batch_size=64))
    assert set(starts.tolist()) == set(docs.starts.tolist())  # 64 draws over 5 documents reach all of them
    tokens = stream.window(0, len(stream))
    for s in starts:
        assert s == 0 or s == 13 or tokens[s - 1] == EOT
    batches = BatchStream(stream, seed=1, block_size=3, batch_size=4, micro_batch_size=2, rank=0, world=1,
                          start_step=0, documents=docs)  # fmt: skip
    try:
        x, _ = next(batches.next_step())
    finally:
        batches.close()
    first_tokens = {int(tokens[s]) for s in docs.starts}
    assert set(x[:, 0].tolist()) <= first_tokens


def test_a_corpus_without_documents_is_refused(tmp_path):
    stream = TokenStream([write_token_file(tmp_path / "train.tok", np.arange(50) % 8, 10, "t")])
    with pytest.raises(UserError, match="data.align=document needs documents"):
        DocumentStarts(stream, None, block_size=4)
    with pytest.raises(UserError, match="found 1 document start"):
        DocumentStarts(stream, EOT, block_size=4)  # no end-of-text inside: one document


def test_training_on_documents_end_to_end(tmp_path, shakespeare):
    corpus = tmp_path / "plays.txt"
    corpus.write_text(shakespeare[:40_000])
    data = tmp_path / "data"
    prep = subprocess.run(
        [sys.executable, "-m", "gpt.prepare", "--input", str(corpus), "--out", str(data / "paragraphs"),
         "--sample_by", "paragraph"],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-2000:]
    out = tmp_path / "run"
    r = run_script("train.py", *TINY, "train.max_steps=10", f"data.root={data}", "data.dataset=paragraphs",
                   "data.align=document", f"out_dir={out}", "train.final_eval=false")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "document starts" in r.stdout
    losses = [json.loads(line)["train/loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in line]  # fmt: skip
    assert losses[-1] < losses[0]


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
