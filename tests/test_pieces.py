"""Documents read and tokenized in pieces give what reading them whole gives."""

import random
from io import StringIO

import pytest

from gpt.pieces import split_pieces, text_file_pieces
from gpt.tokenizer import ASSETS, make_tokenizer


def documents_as_datasets_reads_them(text: str, sample_by: str) -> list[str]:
    """The documents of datasets' text builder (universal newlines, lines without their newline,
    non-empty paragraphs, or the whole file)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if sample_by == "line":
        return [line.rstrip("\n") for line in StringIO(text).readlines()]
    if sample_by == "paragraph":
        return [p for p in text.split("\n\n") if p]
    return [text]


def join(pieces) -> list[str]:
    documents, current = [], []
    for text, ends in pieces:
        current.append(text)
        if ends:
            assert text or not "".join(current), "the last piece of a non-empty document is empty"
            documents.append("".join(current))
            current = []
    assert not current, "pieces after the last document's end"
    return documents


@pytest.mark.parametrize("sample_by", ["line", "paragraph", "document"])
def test_text_file_pieces_give_the_documents_of_datasets(tmp_path, sample_by):
    rng = random.Random(0)
    parts = ["a", "b", " ", "\n", "\r\n", "\r", "  ", "é", "\n\n"]
    path = tmp_path / "t.txt"
    for _ in range(400):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 40)))
        path.write_bytes(text.encode())
        for limit in (3, 4, 7, 1000):  # pieces far shorter than lines, paragraphs and separators' runs
            pieces = list(text_file_pieces(path, sample_by, limit))
            assert join(pieces) == documents_as_datasets_reads_them(text, sample_by), (text, limit)
            assert all(len(p) <= limit for p, _ in pieces)


def test_gpt2_tokens_of_the_pieces_are_those_of_the_whole_text():
    tok = make_tokenizer("gpt2")
    text = (ASSETS / "tinyshakespeare.txt").read_text()[:20_000]
    for doc in (text, text.replace("\n", "  \n   ")):  # runs of spaces too
        pieces = list(split_pieces(doc, 200))
        assert len(pieces) > 50 and all(len(p) <= 200 for p, _ in pieces)
        assert [t for p, _ in pieces for t in tok.encode(p)] == tok.encode(doc)
