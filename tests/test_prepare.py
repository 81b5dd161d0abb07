"""Preparation through `datasets`: every input kind gives the tokens of tokenizing it directly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt.data import HEADER_SIZE, TokenFile, TokenStream, split_files, write_token_file
from gpt.errors import UserError
from gpt.prepare import STAGING, ensure_dataset, is_prepared, read_text, utf8_error
from gpt.prepare import main as prepare_main
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, load_tokenizer

from conftest import TINY, assert_one_line, env, run_module, run_script

EOT = 50256


@pytest.fixture(scope="module")
def documents(shakespeare) -> list[str]:
    """About 300 documents of different lengths: paragraphs of Tiny Shakespeare."""
    return [p for p in shakespeare[:60_000].split("\n\n") if p]


def tokens(folder, split) -> np.ndarray:
    files = split_files(folder, split)
    assert files, f"no {split} shards in {folder}"
    return np.concatenate([TokenFile(f).tokens for f in files]).astype(np.int64)


def expected_bpe(docs, val_every=10):
    """GPT-2 ids of each document followed by end-of-text; every val_every-th document (9, 19, ...) is val."""
    enc = GPT2Tokenizer()
    split = {"train": [], "val": []}
    for i, doc in enumerate(docs):
        split["val" if i % val_every == val_every - 1 else "train"] += enc.encode(doc) + [EOT]
    return split


def prepare(*args: str) -> None:
    assert prepare_main([*args, "--num_proc", "1"]) == 0


def write_jsonl(path, docs, column="body"):
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, column: doc}) + "\n")
    return path


def test_bundled_shakespeare_keeps_the_lecture_split(tmp_path, shakespeare):
    folder = ensure_dataset(tmp_path, "shakespeare_char")
    train, val = tokens(folder, "train"), tokens(folder, "val")
    assert (len(train), len(val)) == (1_003_854, 111_540)
    tok = CharTokenizer(shakespeare)
    np.testing.assert_array_equal(train, tok.encode(shakespeare[:1_003_854]))
    np.testing.assert_array_equal(val, tok.encode(shakespeare[1_003_854:]))
    assert load_tokenizer(folder / "tokenizer.json").identity == tok.identity  # no separator for one document


def test_one_text_file_is_one_document_split_by_characters(tmp_path, shakespeare):
    text = shakespeare[:20_000]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    prepare("--input", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), "--tokenizer", "gpt2")
    enc = GPT2Tokenizer()
    np.testing.assert_array_equal(tokens(tmp_path / "out", "train"), enc.encode(text[:18_000]))
    np.testing.assert_array_equal(tokens(tmp_path / "out", "val"), enc.encode(text[18_000:]) + [EOT])


def test_folder_of_text_files(tmp_path, documents):
    for i, doc in enumerate(documents):
        (tmp_path / "corpus" / f"{i // 100}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "corpus" / f"{i // 100}" / f"doc-{i:04d}.txt").write_text(doc, encoding="utf-8")
    (tmp_path / "corpus" / ".hidden").write_text("not a document")
    prepare("--input", str(tmp_path / "corpus"), "--out", str(tmp_path / "out"), "--tokenizer", "gpt2")
    expected = expected_bpe(documents)
    for split in ("train", "val"):
        np.testing.assert_array_equal(tokens(tmp_path / "out", split), expected[split])


def test_glob_of_text_files_one_document_per_line(tmp_path, documents):
    lines = [doc.replace("\n", " ") for doc in documents]
    (tmp_path / "a.txt").write_text("\n".join(lines[:150]) + "\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n".join(lines[150:]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    prepare("--input", str(tmp_path / "*.txt"), "--sample_by", "line", "--out", str(out), "--tokenizer", "gpt2")
    expected = expected_bpe(lines)
    for split in ("train", "val"):
        np.testing.assert_array_equal(tokens(out, split), expected[split])


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_table_files_with_a_text_column(tmp_path, documents, kind):
    path = tmp_path / f"docs.{kind}"
    if kind == "jsonl":
        write_jsonl(path, documents)
    else:
        pq.write_table(pa.table({"id": list(range(len(documents))), "body": documents}), path, row_group_size=50)
    prepare("--input", str(path), "--text_column", "body", "--out", str(tmp_path / "out"), "--tokenizer", "gpt2")
    expected = expected_bpe(documents)
    for split in ("train", "val"):
        np.testing.assert_array_equal(tokens(tmp_path / "out", split), expected[split])
    manifest = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert manifest["documents"] == {"total": len(documents), "val": len(documents) // 10}


def test_char_vocabulary_over_documents_has_an_end_of_text_separator(tmp_path, documents):
    path = write_jsonl(tmp_path / "docs.jsonl", documents)
    out = tmp_path / "out"
    prepare("--input", str(path), "--text_column", "body", "--out", str(out), "--val_fraction", "0.25")
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.chars == "".join(sorted(set("".join(documents))))  # the first pass saw every document
    assert tok.eot_id == len(tok.chars) == tok.vocab_size - 1
    expected = {"train": [], "val": []}
    for i, doc in enumerate(documents):
        expected["val" if i % 4 == 3 else "train"] += tok.encode(doc) + [tok.eot_id]
    for split in ("train", "val"):
        got = tokens(out, split)
        np.testing.assert_array_equal(got, expected[split])
    val = tokens(out, "val")
    assert (val == tok.eot_id).sum() == len(documents) // 4
    assert tok.decode(val[: len(documents[3]) + 1].tolist()) == documents[3] + "<|endoftext|>"


def test_val_split_is_deterministic_whatever_the_processes_and_shards(tmp_path, documents):
    path = write_jsonl(tmp_path / "docs.jsonl", documents)
    common = ["--input", str(path), "--text_column", "body", "--tokenizer", "gpt2", "--val_fraction", "0.05"]
    assert prepare_main([*common, "--out", str(tmp_path / "a"), "--num_proc", "1"]) == 0
    assert prepare_main([*common, "--out", str(tmp_path / "b"), "--num_proc", "2", "--shard_tokens", "1000"]) == 0
    for split in ("train", "val"):
        np.testing.assert_array_equal(tokens(tmp_path / "a", split), tokens(tmp_path / "b", split))
    assert len(split_files(tmp_path / "b", "train")) > 10
    np.testing.assert_array_equal(tokens(tmp_path / "a", "val"), expected_bpe(documents, val_every=20)["val"])


def test_explicit_val_files(tmp_path, documents):
    train = write_jsonl(tmp_path / "train.jsonl", documents[:200])
    val = write_jsonl(tmp_path / "val.jsonl", documents[200:])
    out = tmp_path / "out"
    prepare(
        "--input",
        str(train),
        "--val_input",
        str(val),
        "--text_column",
        "body",
        "--out",
        str(out),
        "--tokenizer",
        "gpt2",
    )
    enc = GPT2Tokenizer()
    np.testing.assert_array_equal(tokens(out, "train"), [t for d in documents[:200] for t in enc.encode(d) + [EOT]])
    np.testing.assert_array_equal(tokens(out, "val"), [t for d in documents[200:] for t in enc.encode(d) + [EOT]])


def test_dataset_by_name_with_a_named_val_split(tmp_path, documents, monkeypatch):
    """--dataset goes through datasets.load_dataset; a local dataset folder stands in for the hub."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    (tmp_path / "hub").mkdir()
    write_jsonl(tmp_path / "hub" / "train.jsonl", documents[:200], column="text")
    write_jsonl(tmp_path / "hub" / "validation.jsonl", documents[200:], column="text")
    enc = GPT2Tokenizer()
    for streaming in ([], ["--streaming"]):
        out = tmp_path / f"out{len(streaming)}"
        prepare(
            "--dataset",
            str(tmp_path / "hub"),
            "--val_split",
            "validation",
            *streaming,
            "--out",
            str(out),
            "--tokenizer",
            "gpt2",
        )
        np.testing.assert_array_equal(tokens(out, "val"), [t for d in documents[200:] for t in enc.encode(d) + [EOT]])
        assert len(tokens(out, "train")) == sum(len(enc.encode(d)) + 1 for d in documents[:200])


def test_vocabulary_over_65535_is_stored_as_uint32_and_round_trips(tmp_path):
    alphabet = [chr(0x10000 + i) for i in range(70_000)]  # 70,000 distinct characters: a synthetic vocabulary
    docs = ["".join(alphabet[i::7]) for i in range(7)] + ["".join(reversed(alphabet[:5000]))]
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    prepare(
        "--input",
        str(path),
        "--text_column",
        "body",
        "--out",
        str(out),
        "--val_fraction",
        "0.25",
        "--shard_tokens",
        "9000",
    )
    tok = load_tokenizer(out / "tokenizer.json")
    assert tok.vocab_size == 70_001
    for split, picked in (("train", [0, 1, 2, 4, 5, 6]), ("val", [3, 7])):
        files = split_files(out, split)
        assert all(TokenFile(f).dtype.itemsize == 4 for f in files)
        got = tokens(out, split)
        assert got.max() > 65_535
        assert tok.decode(got.tolist()) == "".join(docs[i] + "<|endoftext|>" for i in picked)


def test_windows_across_prepared_shards(tmp_path, documents):
    path = write_jsonl(tmp_path / "docs.jsonl", documents)
    out = tmp_path / "out"
    prepare(
        "--input", str(path), "--text_column", "body", "--out", str(out), "--tokenizer", "gpt2", "--shard_tokens", "777"
    )
    files = split_files(out, "train")
    sizes = [TokenFile(f).num_tokens for f in files]
    assert sizes[:-1] == [777] * (len(files) - 1) and 0 < sizes[-1] <= 777
    flat = np.array(expected_bpe(documents)["train"])
    stream = TokenStream(files)
    starts = np.array([0, 700, 776, 777, 1500, 1554, len(flat) - 65])
    np.testing.assert_array_equal(stream.windows(starts, 65), np.stack([flat[s : s + 65] for s in starts]))


def test_truncated_or_foreign_shard_is_named(tmp_path, documents):
    path = write_jsonl(tmp_path / "docs.jsonl", documents)
    out = tmp_path / "out"
    prepare(
        "--input",
        str(path),
        "--text_column",
        "body",
        "--out",
        str(out),
        "--tokenizer",
        "gpt2",
        "--shard_tokens",
        "5000",
    )
    second = split_files(out, "train")[1]
    good = second.read_bytes()
    second.write_bytes(good[:-2])
    with pytest.raises(UserError, match=f"{second}.*truncated or corrupt"):
        TokenStream(split_files(out, "train"))
    second.write_bytes(b"\x00" * len(good))
    with pytest.raises(UserError, match=f"{second} is not a token file"):
        TokenStream(split_files(out, "train"))


def test_vocabulary_or_tokenizer_mismatch_names_the_file(tmp_path, shakespeare):
    folder = ensure_dataset(tmp_path, "shakespeare_char")
    stream = TokenStream(split_files(folder, "val"))
    stream.check_model(65, "char-65-a2b8d0124693")
    stream.check_model(128)  # a larger (padded) vocabulary reads the data fine
    with pytest.raises(UserError, match=r"val-000000.tok holds token ids of a vocabulary of 65 but the model's .* 50"):
        stream.check_model(50)
    with pytest.raises(UserError, match=r"val-000000.tok was made by tokenizer 'char-65-.*' but the model uses 'gpt2'"):
        stream.check_model(50257, "gpt2")


def test_rerun_skips_refuses_or_overwrites(tmp_path, documents, capsys):
    path = write_jsonl(tmp_path / "docs.jsonl", documents)
    out = tmp_path / "out"
    args = ["--input", str(path), "--text_column", "body", "--out", str(out)]
    prepare(*args)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    prepare(*args)  # same settings, complete: nothing to do
    assert "already prepared" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(UserError, match="different: tokenizer"):
        prepare_main([*args, "--tokenizer", "gpt2"])
    assert (out / "train-000000.tok").stat().st_mtime_ns == before["train-000000.tok"]
    (out / "prepare.json").unlink()  # token files of unknown origin
    with pytest.raises(UserError, match="pass --overwrite"):
        prepare_main(args)
    prepare(*args, "--tokenizer", "gpt2", "--overwrite")
    assert load_tokenizer(out / "tokenizer.json").identity == "gpt2"


def test_an_interrupted_prepare_leaves_no_shard(tmp_path, documents):
    path = write_jsonl(tmp_path / "docs.jsonl", documents * 40)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gpt.prepare", "--input", str(path), "--text_column", "body", "--out", str(out)]
    proc = subprocess.Popen([*cmd, "--tokenizer", "gpt2", "--shard_tokens", "2000", "--num_proc", "1"], env=env())
    deadline = time.monotonic() + 120
    while not list((out / STAGING).glob("train-*.tok")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)  # no clean-up runs
    proc.wait()
    assert list((out / STAGING).glob("train-*.tok"))  # finished shards exist, but only in the staging folder
    assert split_files(out, "train") == [] and not is_prepared(out)
    with pytest.raises(UserError, match="interrupted preparation; pass --overwrite"):
        prepare_main([*cmd[3:], "--tokenizer", "gpt2"])
    assert (
        prepare_main(
            ["--input", str(path), "--text_column", "body", "--out", str(out), "--overwrite", "--num_proc", "1"]
        )
        == 0
    )
    assert is_prepared(out) and not (out / STAGING).exists()


def test_error_inside_prepare_removes_its_output(tmp_path):
    (tmp_path / "docs.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    args = ["--input", str(tmp_path / "docs.jsonl"), "--text_column", "body", "--out", str(tmp_path / "o")]
    with pytest.raises(UserError, match="the val split is empty"):
        prepare_main([*args, "--num_proc", "1"])
    assert not (tmp_path / "o").exists()  # val split empty: refused, nothing left behind


def test_non_utf8_file_in_a_folder_is_located(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("fine\n")
    (tmp_path / "in" / "b.txt").write_bytes("ok ☃\nstill ok\nbad: caf\xe9\n".encode().replace(b"\xc3\xa9", b"\xe9"))
    with pytest.raises(UserError) as e:
        prepare_main(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--num_proc", "1"])
    assert f"{tmp_path / 'in' / 'b.txt'} is not UTF-8: byte 0xe9 at line 3, column 9" in str(e.value)


def test_utf8_error_is_exact_across_read_chunks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("é☃\n€€€\nab".encode() + b"\xff" + b"zz")
    for chunk in (1, 2, 3, 5, 1 << 20):
        assert "byte 0xff at line 3, column 3 (offset 18)" in utf8_error(path, chunk_bytes=chunk)
    path.write_bytes("é☃\n€€€".encode())
    assert all(utf8_error(path, chunk_bytes=c) is None for c in (1, 2, 3))


def test_malformed_tables_are_one_clear_error(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n{"text": broken\n')
    (tmp_path / "b.csv").write_text('text,x\n"a,1\n')
    (tmp_path / "c.parquet").write_bytes(b"PAR1 not really")
    for name in ("a.jsonl", "b.csv", "c.parquet"):
        with pytest.raises(UserError) as e:
            prepare_main(["--input", str(tmp_path / name), "--out", str(tmp_path / "o"), "--num_proc", "1"])
        assert str(e.value).startswith(f"could not read {tmp_path / name}: ")
    assert not (tmp_path / "o").exists()


def test_read_text_says_where_the_file_stops_being_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("hello\nthere caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="byte 0xe9 at line 2, column 10"):
        read_text(path)
    path.write_text("fine ☃")
    assert read_text(path) == "fine ☃"


def test_missing_column_and_mixed_inputs_are_clear(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", ["a", "b"])
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        "give exactly one of --input": [],
        "has no column 'text' (columns: id, body); use --text_column": ["--input", str(tmp_path / "docs.jsonl")],
        "mixes file kinds (json, text)": ["--input", str(tmp_path)],
        "does not exist": ["--input", str(tmp_path / "nope")],
    }
    for message, args in cases.items():
        with pytest.raises(UserError) as e:
            prepare_main([*args, "--out", str(tmp_path / "o"), "--num_proc", "1"])
        assert message in str(e.value)
    assert not (tmp_path / "o").exists()


def test_training_on_data_of_a_larger_vocabulary_than_the_model_is_refused(tmp_path, data_root):
    r = run_script(
        "train.py", *TINY, f"data.root={data_root}", "data.dataset=tiny", "model.vocab_size=40", cwd=tmp_path
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{data_root / 'tiny' / 'train-000000.tok'} holds token ids of a vocabulary of" in r.stderr


def test_gpt2_124m_preset_is_the_reproduction_setup():
    import torch

    from gpt.config import load_config
    from gpt.model import build_model
    from gpt.plan import GIB, GPU_KINDS, resolve_micro_batch

    cfg = load_config(["gpt2_124m_fineweb"])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.block_size) == (12, 12, 768, 1024)
    assert cfg.train.batch_size * cfg.model.block_size == 524_288  # ~0.5M tokens per step
    assert cfg.model.gelu == load_config(["bench_gpt2_124m"]).model.gelu == "tanh"  # GPT-2's GELU
    cfg.model.vocab_size = GPT2Tokenizer().vocab_size  # what model.vocab_size=0 takes from the prepared data
    h100 = int(GPU_KINDS["h100-80gb"].memory_gib * GIB)
    # micro batch auto on 80 GB GPUs: 128 sequences fit (the loss in pieces holds no whole logits), so 4
    # accumulation steps on 1 GPU; on 8 GPUs each takes its whole share of 64 in one pass
    micro = [resolve_micro_batch(cfg.train, cfg.model, n, h100, "bf16", False)[0] for n in (1, 2, 4, 8)]
    assert micro == [128, 128, 128, 64]
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 124


def test_missing_hub_data_of_a_preset_names_the_hub_command(tmp_path):
    from gpt.config import load_config

    dataset = load_config(["gpt2_124m_fineweb"]).data.dataset
    with pytest.raises(UserError) as e:
        ensure_dataset(tmp_path, dataset)
    assert "python -m gpt.prepare --dataset HuggingFaceFW/fineweb --dataset_config sample-10BT" in str(e.value)
    assert "--tokenizer gpt2" in str(e.value) and "--input" not in str(e.value)


def test_prepare_records_the_largest_id(tmp_path):
    path = write_token_file(tmp_path / "t.tok", [3, 9, 4], vocab_size=10, identity="x")
    assert int.from_bytes(path.read_bytes()[HEADER_SIZE - 4 : HEADER_SIZE], "little") == 9 + 1


def test_prepare_gives_one_line(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello there\n" * 50)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = run_module("gpt.prepare", "--input", "corpus.txt", "--out", str(blocker), cwd=tmp_path)
    assert_one_line(r, f"--out {blocker} is a file")
    r = run_module("gpt.prepare", "--input", "corpus.txt", "--out", "x", "--num_proc", "lots", cwd=tmp_path)
    assert_one_line(r, "argument --num_proc: invalid int value: 'lots'")


WORKERS_THEN_WAIT = """
import os, sys, time
from gpt.prepare import Encoders, Task
from gpt.tokenizer import CharTokenizer
encoders = Encoders(CharTokenizer("ab"), num_proc=2)
list(encoders.submit(Task(["ab"], [True], 0, "train")))  # the pool starts its workers
list(encoders.drain())
import psutil
print(" ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
time.sleep(600)
"""


def test_tokenizer_workers_exit_when_prepare_is_killed():
    import psutil

    parent = subprocess.Popen([sys.executable, "-c", WORKERS_THEN_WAIT], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        workers = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.kill()  # SIGKILL: no chance to shut the pool down
        parent.wait()
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent"
    finally:
        parent.kill()


PEAK_MEMORY = """
import resource, sys
from gpt.prepare import main

def prepare(text_file, out, sample_by):
    assert main(["--input", text_file, "--out", out, "--sample_by", sample_by, "--num_proc", "1"]) == 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak so far

small, huge, out = sys.argv[1:]
baseline = prepare(small, out + "small", "line")  # the same code, its imports included, on little text
print(" ".join(str(prepare(huge, out + sample_by, sample_by) - baseline) for sample_by in ("line", "document")))
"""


@pytest.mark.slow
def test_a_huge_single_line_is_prepared_in_bounded_memory(tmp_path):
    """16 MiB without a newline, as lines and as a document: read and tokenized in pieces, the peak
    memory grows by less than twice its size (it grew by 36 times its size before)."""
    size = 16 << 20
    words = np.array([b"the ", b"quick ", b"fox ", b"jumps "])[np.random.default_rng(0).integers(0, 4, size // 4)]
    (tmp_path / "line.txt").write_bytes(b"".join(words)[:size])
    (tmp_path / "small.txt").write_bytes(b"the quick fox " * 100)
    cmd = [
        sys.executable,
        "-c",
        PEAK_MEMORY,
        str(tmp_path / "small.txt"),
        str(tmp_path / "line.txt"),
        str(tmp_path / "out-"),
    ]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for sample_by, growth in zip(("line", "document"), map(int, r.stdout.split()[-2:]), strict=True):
        assert growth < 2 * size, f"{sample_by}: peak memory {growth / 2**20:.0f} MiB above a small file's"
    manifest = json.loads((tmp_path / "out-line" / "prepare.json").read_text())
    assert manifest["train"] + manifest["val"] == size and manifest["documents"]["total"] == 1


def test_non_utf8_input_says_where(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("hello\nthere caf\xe9\n".encode("latin-1"))
    r = run_module("gpt.prepare", "--input", str(path), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    error = r.stderr.strip().splitlines()[-1]  # after the progress bar's lines
    assert error.startswith("error: ") and "is not UTF-8" in error and "line 2, column 10" in error
    assert not (tmp_path / "x").exists()
