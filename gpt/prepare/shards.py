"""Writing a split as shards into the staging folder, and publishing the finished preparation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gpt.errors import UserError
from gpt.prepared import MANIFEST
from gpt.token_files import TokenFileWriter
from gpt.tokenizer import Tokenizer

SHARD_DIGITS = 6


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
