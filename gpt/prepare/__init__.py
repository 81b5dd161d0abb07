"""Text in, sharded train and val token files out; ``python -m gpt.prepare --help`` (gpt/prepare/cli.py)
says how. The preparation by job:

    sources.py    where text comes from: text files, tables, hub datasets, text in memory
    documents.py  the document stream: units of work, the val split, encoding
    workers.py    the pool of tokenizer processes
    shards.py     shards written into a staging folder, published once complete
    existing.py   what to do with what the output folder already holds: skip, refuse or replace
    pipeline.py   the preparation itself (``prepare``, ``prepare_text``)
    cli.py        the command line

What makes a prepared dataset folder, and the built-in datasets, are in gpt/prepared.py.
"""

from gpt.prepare.cli import main
from gpt.prepare.documents import DocumentEncoder, Encoded, Task
from gpt.prepare.pipeline import prepare, prepare_text
from gpt.prepare.sources import Source, hub_source, local_source, memory_source, read_text, utf8_error
from gpt.prepare.workers import Encoders
from gpt.prepared import BUILTIN_DATASETS, HUB_DATASETS, MANIFEST, STAGING, ensure_dataset, is_prepared

__all__ = [
    "BUILTIN_DATASETS",
    "HUB_DATASETS",
    "MANIFEST",
    "STAGING",
    "DocumentEncoder",
    "Encoded",
    "Encoders",
    "Source",
    "Task",
    "ensure_dataset",
    "hub_source",
    "is_prepared",
    "local_source",
    "main",
    "memory_source",
    "prepare",
    "prepare_text",
    "read_text",
    "utf8_error",
]
