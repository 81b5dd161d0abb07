"""The document stream: a source's documents, as pieces, grouped into units of work (``Task``), the
val split chosen per document, and each unit encoded into train and val token arrays."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gpt.prepare.sources import Source, iter_pieces
from gpt.token_files import dtype_for_vocab
from gpt.tokenizer import CharTokenizer, Tokenizer

TASK_CHARS = 1 << 20  # characters per unit of work sent to a tokenizer process
TASK_DOCS = 1024  # documents per unit of work, at most


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
