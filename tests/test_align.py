"""Document-aligned windows (data.align=document, gpt.data.DocumentStarts)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gpt.data import BatchStream, DocumentStarts, TokenStream, write_token_file
from gpt.errors import UserError

from conftest import ROOT, TINY, env, run_script

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
