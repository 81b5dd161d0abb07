"""Turn a text file into train and val token files (90/10 by default, as in the lecture).

    python -m gpt.prepare --input my_corpus.txt --out data/my_corpus --tokenizer char
    python -m gpt.prepare --input my_corpus.txt --out data/my_corpus_bpe --tokenizer gpt2

The folder then holds ``train.tok``, ``val.tok`` and ``tokenizer.json``; train on it with
``python train.py data.dataset=my_corpus``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt.data import split_files, write_token_file
from gpt.errors import UserError
from gpt.tokenizer import ASSETS, make_tokenizer, save_tokenizer

BUILTIN_DATASETS = {  # name -> (bundled text, tokenizer)
    "shakespeare_char": (ASSETS / "tinyshakespeare.txt", "char"),
    "shakespeare_gpt2": (ASSETS / "tinyshakespeare.txt", "gpt2"),
}


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
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(
            f"{path} is not UTF-8: byte 0x{raw[e.start]:02x} at line {line}, column {column} (offset {e.start}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def prepare_text(text: str, out: str | Path, tokenizer: str = "char", val_fraction: float = 0.1) -> dict:
    """Tokenize ``text`` and write ``train.tok``, ``val.tok`` and ``tokenizer.json`` into ``out``.

    The split is by characters: the first (1 - val_fraction) of the text is train, the rest val.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction must be between 0 and 1, got {val_fraction}")
    out = Path(out)
    tok = make_tokenizer(tokenizer, text)
    cut = int(len(text) * (1.0 - val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, out / "tokenizer.json")
    counts = {}
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        ids = tok.encode(part)
        write_token_file(out / f"{split}.tok", ids, tok.vocab_size, tok.identity)
        counts[split] = len(ids)
    return {"vocab_size": tok.vocab_size, "identity": tok.identity, **counts}


def is_prepared(folder: Path) -> bool:
    return bool(split_files(folder, "train") and split_files(folder, "val") and (folder / "tokenizer.json").is_file())


def ensure_dataset(root: str | Path, name: str) -> Path:
    """The dataset folder, preparing a built-in dataset from the bundled text if it is missing."""
    folder = Path(root) / name
    if is_prepared(folder):
        return folder
    if name in BUILTIN_DATASETS:
        source, tokenizer = BUILTIN_DATASETS[name]
        counts = prepare_text(read_text(source), folder, tokenizer)
        print(f"prepared {folder}: {counts['train']:,} train and {counts['val']:,} val tokens ({tokenizer})")
        return folder
    raise UserError(
        f"no token files in {folder} (need train.tok, val.tok and tokenizer.json); prepare them with "
        f"`python -m gpt.prepare --input YOUR_TEXT.txt --out {folder}`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="UTF-8 text file to tokenize.")
    parser.add_argument("--out", required=True, help="Output folder (e.g. data/my_corpus).")
    parser.add_argument("--tokenizer", choices=["char", "gpt2"], default="char", help="Tokenizer (default: char).")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="Fraction of the text for val (default 0.1).")
    args = parser.parse_args(argv)
    try:
        counts = prepare_text(read_text(args.input), args.out, args.tokenizer, args.val_fraction)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: vocabulary {counts['vocab_size']:,}, {counts['train']:,} train and "
        f"{counts['val']:,} val tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
