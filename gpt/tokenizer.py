"""Tokenizers behind one small interface: the lecture's character-level one and GPT-2 BPE.

A tokenizer is saved as ``tokenizer.json`` beside token files and inside every exported model, and
its ``identity`` is written into token-file headers, so that a model is never fed ids from another
vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Protocol

from gpt.errors import UserError

ASSETS = Path(__file__).resolve().parent / "assets"
GPT2_FILES = {  # file -> sha256, the hashes tiktoken itself expects for its "gpt2" encoding
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


class Tokenizer(Protocol):
    vocab_size: int
    eot_id: int | None  # end-of-text token id, where the tokenizer has one
    identity: str  # short string that names the exact vocabulary

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def to_dict(self) -> dict: ...


class CharTokenizer:
    """One token per character, the vocabulary being the sorted set of characters of the corpus.

    With ``eot=True`` (a corpus of several documents) one more id follows the characters: the
    end-of-text token that ends each document. No text encodes to it, as with GPT-2's.
    """

    EOT_TEXT = "<|endoftext|>"

    def __init__(self, chars: str, eot: bool = False):
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.chars) + int(eot)
        self.eot_id = len(self.chars) if eot else None
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        named = self.chars + ("\0" + self.EOT_TEXT if eot else "")
        digest = hashlib.sha256(named.encode("utf-8")).hexdigest()[:12]
        self.identity = f"char-{self.vocab_size}-{digest}"

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted({ch for ch in text if ch not in self.stoi})
            shown = ", ".join(repr(ch) for ch in unknown)
            raise UserError(
                f"the text has {len(unknown)} character(s) this model's vocabulary does not know: {shown}; "
                "remove or replace them"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.EOT_TEXT if i == self.eot_id else self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": self.chars} | ({"eot": True} if self.eot_id is not None else {})


class GPT2Tokenizer:
    """GPT-2's byte-pair encoding through tiktoken, built from the vocabulary files shipped with gpt."""

    def __init__(self) -> None:
        self.enc = _gpt2_encoding()
        self.vocab_size = self.enc.n_vocab  # 50257
        self.eot_id = self.enc.eot_token  # 50256, <|endoftext|>
        self.identity = "gpt2"

    def encode(self, text: str) -> list[int]:
        # Text that happens to contain "<|endoftext|>" is encoded as ordinary text, never as the special token.
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def to_dict(self) -> dict:
        return {"type": "gpt2"}


@cache
def _gpt2_encoding():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    folder = ASSETS / "gpt2"
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(folder / "vocab.bpe"),
        encoder_json_file=str(folder / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES["vocab.bpe"],
        encoder_json_hash=GPT2_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        # GPT-2's pre-tokenisation pattern (as in tiktoken's own registry).
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
    )


def tokenizer_from_dict(data: dict) -> Tokenizer:
    kind = data.get("type")
    if kind == "char":
        if not isinstance(data["chars"], str) or not isinstance(data.get("eot", False), bool):
            raise TypeError("'chars' must be a string and 'eot' true or false")
        return CharTokenizer(data["chars"], eot=data.get("eot", False))
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer type {kind!r}: expected 'char' or 'gpt2'")


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tok.to_dict(), ensure_ascii=False))


def load_tokenizer(path: Path) -> Tokenizer:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no tokenizer at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid tokenizer file ({e}); re-create it with gpt.prepare") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a valid tokenizer file; re-create it with gpt.prepare")
    try:
        return tokenizer_from_dict(data)
    except (KeyError, TypeError) as e:  # a field missing or of the wrong type
        raise UserError(f"{path} is not a valid tokenizer file ({type(e).__name__}: {e})") from None


def make_tokenizer(kind: str, text: str | None = None) -> Tokenizer:
    """A new tokenizer of the given kind; a char tokenizer takes its vocabulary from ``text``."""
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "char":
        if not text:
            raise UserError("a character-level tokenizer needs a non-empty corpus to build its vocabulary")
        return CharTokenizer.from_text(text)
    raise UserError(f"unknown tokenizer {kind!r}: use 'char' or 'gpt2'")
