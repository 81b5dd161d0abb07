"""Turn text into sharded train and val token files: tables and hub datasets through HuggingFace
``datasets``, text files read here, in pieces.

    python -m gpt.prepare --input my_corpus.txt --out data/my_corpus --tokenizer char
    python -m gpt.prepare --input 'books/*.txt' --out data/books --tokenizer gpt2
    python -m gpt.prepare --input reviews.jsonl --text_column body --out data/reviews --tokenizer gpt2
    python -m gpt.prepare --dataset HuggingFaceFW/fineweb --dataset_config sample-10BT --streaming \\
        --tokenizer gpt2 --val_fraction 0.0005 --out data/fineweb10B

Inputs. ``--input`` is a file, a folder (every file under it, in sorted order) or a glob. Files ending
in .jsonl/.json, .parquet or .csv/.tsv are tables whose ``--text_column`` holds one document per
row; any other file is text, one document per file (``--sample_by paragraph`` or ``line`` makes
each paragraph or line a document instead, with the rules of ``datasets``' text builder). Line
endings are read as "\\n". Every document, however long, is read and tokenized in pieces of at most
a million characters (``gpt.pieces``), so memory stays small even for a huge file without a newline.
``--dataset`` loads a dataset from the HuggingFace hub with ``datasets.load_dataset``
(``--streaming`` reads it without storing it first). Local files are always streamed: nothing is
copied or cached.

Documents. Under GPT-2 BPE each document ends with the end-of-text token (50256). A character-level
vocabulary is the sorted set of characters of the corpus (train and val), found in a first pass over
the data; when the corpus has more than one document, one id after the characters is the
end-of-text token and ends each document, as under BPE.

Split. Document ``i`` (counted from 0 in input order) is in val when floor((i + 1) * f) > floor(i * f)
for ``f = --val_fraction``: every (1/f)-th document, the same on every run and for any
``--num_proc``. ``--val_input`` or ``--val_split`` take val from separate files or a named split
instead. A corpus of a single document (one text file) is split inside it, as in the lecture: the
first (1 - f) of its characters are train, the rest val.

Output. ``<out>/train-000000.tok``, ``train-000001.tok``, ... and ``val-000000.tok``, ... of at most
``--shard_tokens`` tokens each, ``tokenizer.json`` and ``prepare.json`` (the settings and counts).
Shards are written as the tokens arrive, so memory stays the same whatever the corpus size, into
``<out>/.incomplete/``; they are moved into ``<out>`` only once every split is complete, so an
interrupted run never leaves token files that look like a dataset. Running again on a complete
output with the same settings does nothing; anything else already in ``<out>`` is refused unless
``--overwrite``. Train on the result with ``python train.py data.dataset=<name> data.root=<parent>``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import numpy as np

from gpt.data import TokenFileWriter, dtype_for_vocab, split_files
from gpt.errors import ArgumentParser, UserError
from gpt.paths import check_folder
from gpt.pieces import count_documents, split_pieces, text_file_pieces
from gpt.tokenizer import ASSETS, CharTokenizer, Tokenizer, make_tokenizer, save_tokenizer, tokenizer_from_dict

BUILTIN_DATASETS = {  # name -> (bundled text, tokenizer)
    "shakespeare_char": (ASSETS / "tinyshakespeare.txt", "char"),
    "shakespeare_gpt2": (ASSETS / "tinyshakespeare.txt", "gpt2"),
}
HUB_DATASETS = {  # name a preset trains on -> the arguments that prepare it from the Hugging Face hub
    "fineweb10B": "--dataset HuggingFaceFW/fineweb --dataset_config sample-10BT --streaming --tokenizer gpt2 "
    "--val_fraction 0.0005",
}
TABLE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
MANIFEST = "prepare.json"
STAGING = ".incomplete"
SHARD_DIGITS = 6
TASK_CHARS = 1 << 20  # characters per unit of work sent to a tokenizer process
TASK_DOCS = 1024  # documents per unit of work, at most
DEFAULT_VAL_FRACTION = 0.1


# ----------------------------------------------------------------------------------------------
# Inputs: text files (read by gpt.pieces) and `datasets` datasets with a text column


@dataclass
class Source:
    """A `datasets` dataset (map-style or iterable) and where its text is; or text files, read in
    pieces by gpt.pieces (``dataset`` None), so that a huge line or file never sits in memory whole."""

    dataset: Any
    name: str  # what the user gave: a path, a glob or a dataset name
    column: str
    description: dict  # what the manifest records to recognise the same input again
    files: list[Path]  # local files, to locate decoding errors; empty for hub and in-memory data
    sample_by: str = "document"  # text files: what one document is

    def known_length(self) -> int | None:
        return len(self.dataset) if hasattr(self.dataset, "__len__") else None


def input_files(spec: str) -> list[Path]:
    """The files a --input names: a file, every file under a folder, or a glob; in sorted order."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path)))
    elif any(c in spec for c in "*?["):
        import glob

        files = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file())
    else:
        raise UserError(f"input {spec} does not exist")
    if not files:
        raise UserError(f"input {spec} holds no files")
    return files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def file_kind(path: Path) -> str:
    return TABLE_KINDS.get(path.suffix.lower(), "text")


def local_source(spec: str, text_column: str, sample_by: str) -> Source:
    """Local files through `datasets`' packaged builders, streamed (no Arrow copy, no cache)."""
    from datasets import load_dataset
    from pyarrow import ArrowException

    files = input_files(spec)
    kinds = sorted({file_kind(f) for f in files})
    if len(kinds) > 1:
        raise UserError(f"input {spec} mixes file kinds ({', '.join(kinds)}); give one kind of file per --input")
    kind = kinds[0]
    described = [{"path": str(f.resolve()), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files]
    if kind == "text":  # read in pieces by gpt.pieces, with the rules of datasets' text builder
        description = {"files": described, "sample_by": sample_by, "column": "text"}
        return Source(None, spec, "text", description, files, sample_by)
    options: dict[str, Any] = {"sep": "\t"} if kind == "tsv" else {}
    try:
        dataset = load_dataset(
            "csv" if kind == "tsv" else kind,
            data_files=[str(f) for f in files],
            split="train",
            streaming=True,
            **options,
        )
    except (ArrowException, ValueError) as e:
        raise UserError(f"could not read {spec}: {e}") from None
    return Source(dataset, spec, text_column, {"files": described, "column": text_column}, [])


def hub_source(name: str, config: str | None, split: str, text_column: str, streaming: bool, num_proc: int) -> Source:
    """A dataset from the HuggingFace hub (or its local cache) through `datasets.load_dataset`."""
    from datasets import load_dataset

    try:
        extra = {} if streaming else {"num_proc": num_proc}
        dataset = load_dataset(name, config, split=split, streaming=streaming, **extra)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise UserError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {e}") from None
    description = {"dataset": name, "config": config, "split": split, "column": text_column}
    return Source(dataset, name, text_column, description, [])


def memory_source(text: str) -> Source:
    """One document held in memory, as a one-row `datasets.Dataset`."""
    from datasets import Dataset

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Source(Dataset.from_dict({"text": [text]}), "text in memory", "text", {"text_sha256": digest}, [])


def iter_texts(source: Source, batch_rows: int = 256) -> Iterator[list[str]]:
    """The documents of a source in input order, in lists; a missing value counts as an empty document."""
    from pyarrow import ArrowException

    dataset = source.dataset
    columns = dataset.column_names
    if columns is not None and source.column not in columns:
        raise UserError(f"the input has no column {source.column!r} (columns: {', '.join(columns)}); use --text_column")
    if columns is not None:
        dataset = dataset.select_columns([source.column])
    try:
        for batch in dataset.iter(batch_size=batch_rows):
            if source.column not in batch:
                raise UserError(f"the input has no column {source.column!r}; use --text_column")
            texts = batch[source.column]
            for value in texts:
                if value is not None and not isinstance(value, str):
                    raise UserError(
                        f"column {source.column!r} holds {type(value).__name__} values, not text; use --text_column"
                    )
            yield [value or "" for value in texts]
    except UnicodeDecodeError:
        raise UserError(non_utf8_message(source.files)) from None
    except (ArrowException, ValueError) as e:  # a malformed table: pyarrow's and pandas' parsers
        raise UserError(f"could not read {source.name}: {e}") from None


def iter_pieces(source: Source) -> Iterator[tuple[str, bool]]:
    """The documents of a source in input order as pieces of at most PIECE_CHARS characters:
    (text, whether it ends its document); see gpt.pieces."""
    if source.dataset is not None:
        for texts in iter_texts(source):
            for text in texts:
                yield from split_pieces(text)
        return
    for path in source.files:
        try:
            yield from text_file_pieces(path, source.sample_by)
        except UnicodeDecodeError:
            raise UserError(non_utf8_message([path])) from None
        except OSError as e:
            raise UserError(f"cannot read {path}: {e.strerror}") from None


# ----------------------------------------------------------------------------------------------
# Clear errors for text that is not UTF-8


def utf8_error(path: Path, chunk_bytes: int = 1 << 20) -> str | None:
    """Where a file stops being UTF-8, read in chunks; None when all of it is UTF-8."""
    line, line_start, offset, carry = 1, 0, 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            data = carry + chunk
            try:
                data.decode("utf-8")
                good, bad = len(data), None
            except UnicodeDecodeError as e:
                if chunk and e.end == len(data):  # a character cut by the chunk boundary
                    good, bad = e.start, None
                else:
                    good, bad = e.start, e.start
            line += data.count(b"\n", 0, good)
            newline = data.rfind(b"\n", 0, good)
            if newline >= 0:
                line_start = offset + newline + 1
            if bad is not None:
                at = offset + bad
                return (
                    f"{path} is not UTF-8: byte 0x{data[bad]:02x} at line {line}, column {at - line_start + 1} "
                    f"(offset {at}); convert it, e.g. `iconv -f latin1 -t utf-8`"
                )
            offset += good
            carry = data[good:]
            if not chunk:
                return None


def non_utf8_message(files: list[Path]) -> str:
    for path in files:
        message = utf8_error(path)
        if message:
            return message
    return "the input is not valid UTF-8; convert it, e.g. `iconv -f latin1 -t utf-8`"


def read_text(path: str | Path) -> str:
    """The file's text, or one clear error saying where it stops being UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"input file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"input {path} is a directory; give a text file") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(utf8_error(path) or f"{path} is not UTF-8") from None


# ----------------------------------------------------------------------------------------------
# Tokenizing documents into arrays, in this process or in a pool of processes


class DocumentEncoder:
    """Documents -> one array of token ids, each document followed by end-of-text where there is one."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.dtype = dtype_for_vocab(tokenizer.vocab_size)
        self.eot = tokenizer.eot_id
        if isinstance(tokenizer, CharTokenizer):  # vectorised: code points looked up in the sorted vocabulary
            self.codepoints = np.frombuffer(tokenizer.chars.encode("utf-32-le"), dtype="<u4")

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(self.tokenizer, CharTokenizer):
            return np.asarray(self.tokenizer.encode(text), dtype=self.dtype)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        ids = np.searchsorted(self.codepoints, codes)
        if not np.array_equal(self.codepoints[np.minimum(ids, len(self.codepoints) - 1)], codes):
            self.tokenizer.encode(text)  # raises the error that lists the unknown characters
        return ids.astype(self.dtype)

    def encode_document(self, text: str) -> np.ndarray:
        ids = self.encode(text)
        return ids if self.eot is None or not text else np.append(ids, np.array(self.eot, dtype=self.dtype))


def is_val(index: np.ndarray, val_fraction: float) -> np.ndarray:
    """Which documents (by index in the input) belong to val: every (1/f)-th one."""
    return np.floor((index + 1) * val_fraction) > np.floor(index * val_fraction)


@dataclass
class Task:
    texts: list[str]  # pieces of documents (gpt.pieces)
    ends: list[bool]  # whether each piece ends its document
    first_index: int  # index of the document of texts[0] among the documents of its source
    assign: str | float  # "train", "val", or the val fraction that decides per document


@dataclass
class Encoded:
    train: np.ndarray
    val: np.ndarray
    documents: int
    val_documents: int


def encode_task(encoder: DocumentEncoder, task: Task) -> Encoded:
    # the last piece of a non-empty document is not empty (gpt.pieces): end-of-text follows it
    pairs = zip(task.texts, task.ends, strict=True)
    pieces = [encoder.encode_document(text) if end else encoder.encode(text) for text, end in pairs]
    ends = np.array(task.ends, dtype=bool)
    document = task.first_index + np.cumsum(ends) - ends  # each piece's document index
    if isinstance(task.assign, float):
        to_val = is_val(document, task.assign)
    else:
        to_val = np.full(len(pieces), task.assign == "val")
    empty = np.empty(0, dtype=encoder.dtype)
    train = [p for p, v in zip(pieces, to_val, strict=True) if not v]
    val = [p for p, v in zip(pieces, to_val, strict=True) if v]
    return Encoded(
        np.concatenate(train) if train else empty,
        np.concatenate(val) if val else empty,
        documents=int(ends.sum()),
        val_documents=int((ends & to_val).sum()),
    )


_worker_encoder: DocumentEncoder | None = None


def _start_worker(tokenizer: dict, parent: int) -> None:
    global _worker_encoder
    _worker_encoder = DocumentEncoder(tokenizer_from_dict(tokenizer))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker once the process that started it is gone (killed with -9, say, it cannot shut
    the pool down): the worker would otherwise wait for tasks forever, since with fork it holds the
    task queue's writing end itself. A dead parent's children are adopted, so the parent id changes."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _run_task(task: Task) -> Encoded:
    assert _worker_encoder is not None
    return encode_task(_worker_encoder, task)


def worker_context() -> BaseContext:
    """Fork where there is fork: a tokenizer process then starts at once (it needs nothing but numpy and
    the tokenizer, and touches none of the parent's threads); spawn elsewhere."""
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


class Encoders:
    """Encodes tasks in order, in this process (num_proc 1) or in a pool with a bounded queue."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int):
        self.encoder = DocumentEncoder(tokenizer)
        self.pool = None
        self.pending: deque[Future] = deque()
        self.limit = 2 * num_proc  # tasks in flight: keeps every process busy and memory bounded
        if num_proc > 1:
            self.pool = ProcessPoolExecutor(
                num_proc, mp_context=worker_context(), initializer=_start_worker,
                initargs=(tokenizer.to_dict(), os.getpid()),
            )  # fmt: skip

    def submit(self, task: Task) -> Iterator[Encoded]:
        """Queue a task; yields the results that are due, in submission order."""
        if self.pool is None:
            yield encode_task(self.encoder, task)
            return
        self.pending.append(self.pool.submit(_run_task, task))
        while len(self.pending) > self.limit:
            yield self.pending.popleft().result()

    def drain(self) -> Iterator[Encoded]:
        while self.pending:
            yield self.pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def tasks(source: Source, assign: str | float) -> Iterator[Task]:
    """The source's documents, as pieces, grouped into units of work of about TASK_CHARS characters."""
    index, texts, ends, chars = 0, [], [], 0
    for text, end in iter_pieces(source):
        texts.append(text)
        ends.append(end)
        chars += len(text)
        if chars >= TASK_CHARS or len(texts) >= TASK_DOCS:
            yield Task(texts, ends, index, assign)
            index, texts, ends, chars = index + sum(ends), [], [], 0
    if texts:
        yield Task(texts, ends, index, assign)


# ----------------------------------------------------------------------------------------------
# Output: shards, the staging folder, the manifest


class ShardWriter:
    """One split as shards ``<split>-000000.tok``, ... of at most ``shard_tokens`` tokens each."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, tokenizer: Tokenizer):
        self.folder, self.split, self.shard_tokens = folder, split, shard_tokens
        self.vocab_size, self.identity = tokenizer.vocab_size, tokenizer.identity
        self.current: TokenFileWriter | None = None
        self.shards: list[dict] = []
        self.num_tokens = 0

    def write(self, ids: np.ndarray) -> None:
        while ids.size:
            if self.current is None:
                index = len(self.shards)
                if index >= 10**SHARD_DIGITS:
                    raise UserError(f"more than {10**SHARD_DIGITS - 1} shards; raise --shard_tokens")
                name = f"{self.split}-{index:0{SHARD_DIGITS}d}.tok"
                self.current = TokenFileWriter(self.folder / name, self.vocab_size, self.identity)
            piece = ids[: self.shard_tokens - self.current.num_tokens]
            self.current.write(piece)
            self.num_tokens += piece.size
            ids = ids[piece.size :]
            if self.current.num_tokens == self.shard_tokens:
                self._finish_shard()

    def _finish_shard(self) -> None:
        assert self.current is not None
        path = self.current.close()
        self.shards.append({"file": path.name, "tokens": self.current.num_tokens})
        self.current = None

    def close(self) -> list[dict]:
        if self.current is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None


def our_files(out: Path) -> list[Path]:
    """What a preparation writes into its output folder (and nothing else the user keeps there)."""
    names = [MANIFEST, "tokenizer.json", STAGING]
    found = [out / n for n in names if (out / n).exists()]
    return found + sorted(out.glob("*.tok")) + sorted(out.glob("*.tok.partial"))


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(out: Path, manifest: dict) -> bool:
    """Every shard the manifest lists is there with its size, and no staging folder is left."""
    if (out / STAGING).exists() or not (out / "tokenizer.json").is_file():
        return False
    itemsize = dtype_for_vocab(manifest["vocab_size"]).itemsize
    for shard in manifest["shards"]["train"] + manifest["shards"]["val"]:
        path = out / shard["file"]
        if not path.is_file() or path.stat().st_size != 256 + shard["tokens"] * itemsize:
            return False
    return True


def claim_output(out: Path, settings: dict, overwrite: bool) -> bool:
    """Make ``out`` ready for a new preparation; False when it already holds this exact one (skip)."""
    existing = our_files(out) if out.is_dir() else []
    if not existing:
        return True
    manifest = read_manifest(out)
    if manifest is not None and not overwrite and is_complete(out, manifest):
        if manifest.get("settings") == settings:
            return False
        changed = sorted(
            k for k in settings.keys() | manifest["settings"].keys() if settings.get(k) != manifest["settings"].get(k)
        )
        raise UserError(
            f"{out} already holds a dataset prepared with other settings (different: {', '.join(changed)}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    if not overwrite:
        what = "the remains of an interrupted preparation" if (out / STAGING).exists() else "token files"
        raise UserError(f"{out} already holds {what}; pass --overwrite to replace them, or choose another --out")
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return True


def publish(out: Path, staging: Path, manifest: dict) -> None:
    """Move the finished shards and tokenizer into ``out``, then write the manifest that marks it done."""
    for split in ("train", "val"):
        for shard in manifest["shards"][split]:
            os.replace(staging / shard["file"], out / shard["file"])
    os.replace(staging / "tokenizer.json", out / "tokenizer.json")
    partial = staging / MANIFEST
    partial.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    os.replace(partial, out / MANIFEST)
    staging.rmdir()


# ----------------------------------------------------------------------------------------------
# The preparation


class Progress:
    """A progress bar counting documents, tokens and tokens per second."""

    def __init__(self, description: str, total: int | None, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(desc=description, total=total, unit=" docs", disable=not enabled, mininterval=1.0)
        self.tokens = 0
        self.start = time.perf_counter()

    def update(self, documents: int, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens:,} tokens, {rate:,.0f} tokens/s", refresh=False)
        self.bar.update(documents)

    def close(self) -> None:
        self.bar.close()


def build_tokenizer(kind: str, sources: list[Source], progress: bool) -> Tokenizer:
    """GPT-2, or a character vocabulary from a first pass over every source (with end-of-text when
    the corpus has more than one document)."""
    if kind != "char":
        return make_tokenizer(kind)
    chars: set[str] = set()
    documents, nonempty = 0, False  # non-empty documents; whether the current one is
    bar = Progress("reading characters", sum(s.known_length() or 0 for s in sources) or None, progress)
    try:
        for source in sources:
            for text, end in iter_pieces(source):
                chars.update(text)
                nonempty = nonempty or bool(text)
                if end:
                    documents += nonempty
                    nonempty = False
                bar.update(int(end), len(text))
    finally:
        bar.close()
    if not chars:
        raise UserError("the input holds no text")
    return CharTokenizer("".join(chars), eot=documents > 1)


def prepare(
    train: Source,
    out: str | Path,
    tokenizer: str = "char",
    *,
    val: Source | None = None,
    val_fraction: float | None = None,
    shard_tokens: int = 100_000_000,
    num_proc: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize ``train`` (and ``val``) into token files in ``out``; returns the manifest (settings and counts)."""
    if val is not None and val_fraction is not None:
        raise UserError("give either a val fraction or a separate val input, not both")
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if val is None and not 0.0 < fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1, got {fraction}")
    if shard_tokens < 1:
        raise UserError(f"--shard_tokens must be positive, got {shard_tokens}")
    out = Path(out)
    check_folder(out, "--out")
    settings = {
        "input": train.description,
        "val": val.description if val is not None else {"fraction": fraction},
        "tokenizer": tokenizer,
        "shard_tokens": shard_tokens,
    }
    if not claim_output(out, settings, overwrite):
        manifest = read_manifest(out)
        assert manifest is not None
        print(f"{out} is already prepared with these settings; nothing to do (--overwrite redoes it)")
        return manifest | {"skipped": True}
    tok = build_tokenizer(tokenizer, [train] + ([val] if val is not None else []), progress)
    created = not out.exists()
    staging = out / STAGING
    staging.mkdir(parents=True)
    writers = {split: ShardWriter(staging, split, shard_tokens, tok) for split in ("train", "val")}
    start = time.perf_counter()
    try:
        documents = write_splits(train, val, fraction, tok, writers, num_proc, progress)
        shards = {split: w.close() for split, w in writers.items()}
        for split, w in writers.items():
            if w.num_tokens == 0:
                raise UserError(
                    f"the {split} split is empty ({documents['total']} documents, val fraction {fraction}); "
                    "use a larger corpus or change --val_fraction"
                )
        save_tokenizer(tok, staging / "tokenizer.json")
        manifest = {
            "settings": settings,
            "vocab_size": tok.vocab_size,
            "identity": tok.identity,
            "train": writers["train"].num_tokens,
            "val": writers["val"].num_tokens,
            "documents": documents,
            "shards": shards,
            "seconds": round(time.perf_counter() - start, 3),
        }
        publish(out, staging, manifest)
    except BaseException:
        for w in writers.values():
            w.abort()
        shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return manifest


def write_splits(
    train: Source,
    val: Source | None,
    fraction: float,
    tok: Tokenizer,
    writers: dict[str, ShardWriter],
    num_proc: int,
    progress: bool,
) -> dict:
    """Tokenize every document into the writers; returns document counts."""
    documents, characters = count_documents(iter_pieces(train), at_most=2) if val is None else (0, 0)
    if documents == 1:  # one document: split it by characters, as the lecture splits Tiny Shakespeare
        return split_single_document(train, characters, fraction, tok, writers)
    jobs: list[tuple[Source, str | float]] = [(train, fraction)] if val is None else [(train, "train"), (val, "val")]
    bar = Progress("tokenizing", sum(s.known_length() or 0 for s, _ in jobs) or None, progress)
    counts = {"total": 0, "val": 0}
    encoders = Encoders(tok, num_proc)

    def write(results: Iterable[Encoded]) -> None:
        for r in results:
            writers["train"].write(r.train)
            writers["val"].write(r.val)
            counts["total"] += r.documents
            counts["val"] += r.val_documents
            bar.update(r.documents, r.train.size + r.val.size)

    try:
        for source, assign in jobs:
            for task in tasks(source, assign):
                write(encoders.submit(task))
        write(encoders.drain())
    finally:
        encoders.close()
        bar.close()
    return counts


def split_single_document(
    source: Source, characters: int, fraction: float, tok: Tokenizer, writers: dict[str, ShardWriter]
) -> dict:
    """The first (1 - fraction) of the characters of a source's one document to train, the rest to val,
    read and encoded piece by piece."""
    encoder = DocumentEncoder(tok)
    cut = int(characters * (1.0 - fraction))
    position = 0
    for text, _ in iter_pieces(source):
        head = min(len(text), max(0, cut - position))  # the piece's characters before the cut
        if head:
            writers["train"].write(encoder.encode(text[:head]))
        if head < len(text):
            writers["val"].write(encoder.encode(text[head:]))
        position += len(text)
    if position > cut and encoder.eot is not None:  # the document's end is in val
        writers["val"].write(np.array([encoder.eot], dtype=encoder.dtype))
    return {"total": 1, "val": 0, "split_by_characters": True}


def prepare_text(
    text: str, out: str | Path, tokenizer: str = "char", val_fraction: float = 0.1, overwrite: bool = False
) -> dict:
    """Tokenize one document held in memory into ``out`` (split by characters: the first
    (1 - val_fraction) is train, the rest val). Returns the manifest (``train``/``val`` token counts)."""
    return prepare(memory_source(text), out, tokenizer, val_fraction=val_fraction, overwrite=overwrite, progress=False)


def is_prepared(folder: Path) -> bool:
    return bool(
        split_files(folder, "train")
        and split_files(folder, "val")
        and (folder / "tokenizer.json").is_file()
        and not (folder / STAGING).exists()
    )


def ensure_dataset(root: str | Path, name: str) -> Path:
    """The dataset folder, preparing a built-in dataset from the bundled text if it is missing."""
    folder = Path(root) / name
    if is_prepared(folder):
        return folder
    if name in BUILTIN_DATASETS:
        check_folder(root, "data.root")  # the built-in dataset is prepared there
        path, tokenizer = BUILTIN_DATASETS[name]
        source = local_source(str(path), "text", "document")
        counts = prepare(source, folder, tokenizer, val_fraction=0.1, overwrite=True, progress=False)
        print(f"prepared {folder}: {counts['train']:,} train and {counts['val']:,} val tokens ({tokenizer})")
        return folder
    source = HUB_DATASETS.get(name, "--input YOUR_TEXT.txt --tokenizer char")
    also = "" if name in HUB_DATASETS else " (or --tokenizer gpt2)"
    raise UserError(
        f"no token files in {folder} (need train and val token files and tokenizer.json); prepare them with "
        f"`python -m gpt.prepare {source} --out {folder}`{also}"
    )


# ----------------------------------------------------------------------------------------------
# Command line


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog="python -m gpt.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_argument_group("input (one of --input, --dataset)")
    src.add_argument("--input", help="A text/jsonl/json/parquet/csv/tsv file, a folder of them, or a glob.")
    src.add_argument("--dataset", help="A HuggingFace hub dataset, e.g. HuggingFaceFW/fineweb.")
    src.add_argument("--dataset_config", help="The hub dataset's configuration, e.g. sample-10BT.")
    src.add_argument("--split", default="train", help="The hub dataset's split to read (default: train).")
    src.add_argument("--streaming", action="store_true", help="Stream the hub dataset instead of storing it first.")
    src.add_argument("--text_column", default="text", help="Column that holds the documents (default: text).")
    src.add_argument(
        "--sample_by", choices=["document", "paragraph", "line"], default="document",
        help="For text files: what one document is (default: the whole file).",
    )  # fmt: skip
    split = p.add_argument_group("val split (default: --val_fraction 0.1)")
    split.add_argument("--val_fraction", type=float, help="Every (1/f)-th document goes to val.")
    split.add_argument("--val_input", help="Files for val (same kinds as --input) instead of a fraction.")
    split.add_argument("--val_split", help="A split of the hub dataset for val, e.g. validation.")
    outp = p.add_argument_group("output")
    outp.add_argument("--out", required=True, help="Output folder, e.g. data/my_corpus.")
    outp.add_argument("--tokenizer", choices=["char", "gpt2"], default="char", help="Tokenizer (default: char).")
    outp.add_argument("--shard_tokens", type=int, default=100_000_000, help="Tokens per shard at most (100M).")
    outp.add_argument("--num_proc", type=int, default=available_cpus(), help="Tokenizer processes (default: all CPUs).")
    outp.add_argument("--overwrite", action="store_true", help="Replace what --out already holds.")
    return p.parse_args(argv)


def sources_from_args(args: argparse.Namespace) -> tuple[Source, Source | None]:
    if (args.input is None) == (args.dataset is None):
        raise UserError("give exactly one of --input (local files) and --dataset (a HuggingFace dataset)")
    if args.input is not None:
        if args.val_split:
            raise UserError("--val_split names a split of a --dataset; for local files use --val_input")
        train = local_source(args.input, args.text_column, args.sample_by)
        val = local_source(args.val_input, args.text_column, args.sample_by) if args.val_input else None
        return train, val
    if args.val_input:
        raise UserError("--val_input is for local files; for a --dataset use --val_split")
    load = (args.dataset, args.dataset_config)
    train = hub_source(*load, args.split, args.text_column, args.streaming, args.num_proc)
    val = hub_source(*load, args.val_split, args.text_column, args.streaming, args.num_proc) if args.val_split else None
    return train, val


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.num_proc < 1:
            raise UserError(f"--num_proc must be 1 or more, got {args.num_proc}")
        train, val = sources_from_args(args)
        m = prepare(
            train, args.out, args.tokenizer, val=val, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
            num_proc=args.num_proc, overwrite=args.overwrite,
        )  # fmt: skip
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if m.get("skipped"):
        return 0
    rate = (m["train"] + m["val"]) / max(m["seconds"], 1e-9)
    print(
        f"wrote {args.out}: vocabulary {m['vocab_size']:,}, {m['train']:,} train tokens in "
        f"{len(m['shards']['train'])} shard(s), {m['val']:,} val tokens in {len(m['shards']['val'])} shard(s), "
        f"{m['documents']['total']:,} documents, {m['seconds']:.1f} s ({rate:,.0f} tokens/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
