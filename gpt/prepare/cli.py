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
import os

from gpt.errors import ArgumentParser, UserError
from gpt.prepare.pipeline import prepare
from gpt.prepare.sources import Source, hub_source, local_source


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
    """Prepare as the command line asks; bad input raises a UserError (``python -m gpt.prepare`` runs
    this through gpt.errors.run_main: one line, exit code 2)."""
    args = parse_args(argv)
    if args.num_proc < 1:
        raise UserError(f"--num_proc must be 1 or more, got {args.num_proc}")
    train, val = sources_from_args(args)
    m = prepare(
        train, args.out, args.tokenizer, val=val, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
        num_proc=args.num_proc, overwrite=args.overwrite,
    )  # fmt: skip
    if m.get("skipped"):
        return 0
    rate = (m["train"] + m["val"]) / max(m["seconds"], 1e-9)
    print(
        f"wrote {args.out}: vocabulary {m['vocab_size']:,}, {m['train']:,} train tokens in "
        f"{len(m['shards']['train'])} shard(s), {m['val']:,} val tokens in {len(m['shards']['val'])} shard(s), "
        f"{m['documents']['total']:,} documents, {m['seconds']:.1f} s ({rate:,.0f} tokens/s)"
    )
    return 0
