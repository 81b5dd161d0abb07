"""The preparation: sources in, a tokenizer built, every document tokenized into train and val
shards, published into the output folder once complete."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gpt.errors import UserError
from gpt.paths import check_folder
from gpt.pieces import count_documents
from gpt.prepare.documents import DocumentEncoder, Encoded, tasks
from gpt.prepare.existing import claim_output, read_manifest
from gpt.prepare.shards import ShardWriter, publish
from gpt.prepare.sources import Source, iter_pieces, memory_source
from gpt.prepare.workers import Encoders
from gpt.prepared import STAGING
from gpt.tokenizer import CharTokenizer, Tokenizer, make_tokenizer, save_tokenizer

DEFAULT_VAL_FRACTION = 0.1


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
