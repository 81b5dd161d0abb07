import numpy as np
import pytest

from gpt.data import (
    HEADER_SIZE,
    BatchStream,
    TokenFile,
    TokenStream,
    step_window_starts,
    write_token_file,
)
from gpt.errors import UserError


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
