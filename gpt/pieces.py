"""Documents as pieces of bounded length, so that memory stays small however long a document is.

A document of any length (a 200 MB file without a newline, say) reaches the tokenizer as a series
of pieces of at most ``PIECE_CHARS`` characters; ``(text, ends)`` says whether the piece ends its
document. Joining the pieces of a document gives it back exactly, and the last piece of a
non-empty document is never empty (its end-of-text token follows it).

A piece ends, where it can, just before a space that follows a non-space character: GPT-2's
pre-tokenizer starts a new word there, so tokenizing the pieces one by one gives the tokens of the
whole document. Only a stretch of ``PIECE_CHARS`` characters without such a space is cut anywhere.

Text files are read here, in pieces, with the rules of ``datasets``' text builder (which reads a
whole document, or a whole line, into memory at once): universal newlines become "\\n"; with
``sample_by="line"`` each line is a document, without its "\\n"; with ``"paragraph"`` the text
between blank lines ("\\n\\n"), empty ones skipped; with ``"document"`` the whole file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

PIECE_CHARS = 1 << 20
SEPARATORS = {"line": "\n", "paragraph": "\n\n", "document": None}


def piece_end(text: str, limit: int) -> int:
    """Where to end a piece of ``text`` of at most ``limit`` characters (0 < result <= limit): before
    the last space after a non-space in its second half, else at ``limit``."""
    space = text.rfind(" ", limit // 2, limit)
    while space > limit // 2 and text[space - 1].isspace():
        space = text.rfind(" ", limit // 2, space)
    return space if space > limit // 2 else limit


def split_pieces(text: str, limit: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
    """One document held in memory as pieces of at most ``limit`` characters."""
    start = 0
    while len(text) - start > limit:
        end = start + piece_end(text[start : start + limit], limit)
        yield text[start:end], False
        start = end
    yield text[start:], True


def text_file_pieces(path: Path, sample_by: str, limit: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
    """The documents of a text file as pieces, reading at most ``limit`` characters at a time.

    Raises UnicodeDecodeError for a file that is not UTF-8.
    """
    separator = SEPARATORS[sample_by]
    keep = len(separator) if separator else 1  # held back: may be part of a separator, and keeps last pieces whole
    pending, started = "", False  # the current document's unread text; whether pieces of it went out
    with open(path, encoding="utf-8") as f:  # text mode: universal newlines, as datasets reads
        while chunk := f.read(limit):
            pending += chunk
            if separator:
                *ended, pending = pending.split(separator)
                for text in ended:
                    if text or started or sample_by == "line":  # paragraph mode skips empty paragraphs
                        yield from split_pieces(text, limit)
                    started = False
            while len(pending) > limit:
                end = piece_end(pending, min(limit, len(pending) - keep))
                yield pending[:end], False
                pending, started = pending[end:], True
    if separator is None or pending or started:
        yield pending, True


def count_documents(pieces: Iterator[tuple[str, bool]], at_most: int) -> tuple[int, int]:
    """(documents, characters) of the first ``at_most`` documents."""
    documents = characters = 0
    for text, ends in pieces:
        characters += len(text)
        documents += ends
        if documents == at_most:
            break
    return documents, characters
