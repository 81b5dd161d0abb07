"""Token files: the format training reads, written in pieces and read through memory maps.

A token file is a 256-byte header followed by the tokens as little-endian uint16 (or uint32 when the
vocabulary has more than 65,535 entries):

    offset  size  field
    0       8     magic b"GPTTOKEN"
    8       4     format version (1)
    12      4     bytes per token (2 or 4)
    16      8     number of tokens
    24      4     vocabulary size
    28      4     length of the tokenizer identity in bytes
    32      220   tokenizer identity (UTF-8, zero padded)
    252     4     largest token id in the file + 1 (0: not recorded, as in files written before it was)

Opening a file checks its largest id, and a sample of its tokens, against its vocabulary; every
window read for training or evaluation is checked too, so an id beyond the vocabulary is reported
with its file instead of failing inside the model's embedding.

Training reads the tokens through ``np.memmap``: only the windows a batch needs are paged in. Two
things keep resident memory flat however large the files and however long the run: the mapping is
advised ``MADV_RANDOM`` (no read-ahead of pages the reads will not use), and whenever the windows
read since the last release may have mapped ``RESIDENT_BUDGET`` bytes (a window maps the pages it
covers and, through the kernel's fault-around, up to 64 KiB of cached neighbours per page fault),
the mappings are dropped (``TokenFile.release``), which unmaps every page they brought in. The pages stay in the
kernel's page cache, which the kernel reclaims as it needs, so the next read of them is cheap.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import NoReturn

import numpy as np

from gpt.errors import UserError

MAGIC = b"GPTTOKEN"
VERSION = 1
HEADER_SIZE = 256
_FIXED = struct.Struct("<8sIIQII")  # magic, version, itemsize, num_tokens, vocab_size, identity length
_MAX_ID = struct.Struct("<I")  # largest token id + 1, in the header's last 4 bytes
MAX_IDENTITY = HEADER_SIZE - _FIXED.size - _MAX_ID.size
SAMPLE_PIECES, SAMPLE_PIECE_TOKENS = 16, 4096  # tokens checked at open: evenly spaced pieces of each file
RESIDENT_BUDGET = 64 << 20  # bytes a stream may map between two releases of its mappings
FAULT_AROUND = 64 << 10  # Linux's default fault-around: what one page fault may map


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _header(itemsize: int, num_tokens: int, vocab_size: int, identity: str, max_id: int = -1) -> bytes:
    ident = identity.encode("utf-8")
    if len(ident) > MAX_IDENTITY:
        raise ValueError(f"tokenizer identity longer than {MAX_IDENTITY} bytes: {identity!r}")
    head = _FIXED.pack(MAGIC, VERSION, itemsize, num_tokens, vocab_size, len(ident)) + ident
    return head.ljust(HEADER_SIZE - _MAX_ID.size, b"\0") + _MAX_ID.pack(max_id + 1)


class TokenFileWriter:
    """Writes a token file incrementally; the file appears under its name only once it is complete.

    Tokens go to ``<path>.partial``; ``close()`` writes the final count into the header, flushes and
    renames, so an interrupted writer never leaves a file that looks whole.
    """

    def __init__(self, path: str | Path, vocab_size: int, identity: str):
        self.path = Path(path)
        self.dtype = dtype_for_vocab(vocab_size)
        self.vocab_size = vocab_size
        self.identity = identity
        self.num_tokens = 0
        self.max_id = -1  # recorded in the header
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.partial, "wb")  # noqa: SIM115 (closed by close() or abort())
        self.file.write(_header(self.dtype.itemsize, 0, vocab_size, identity))

    def write(self, tokens: np.ndarray | list[int]) -> None:
        arr = np.asarray(tokens)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {arr.min()}..{arr.max()}")
        if arr.size:
            self.max_id = max(self.max_id, int(arr.max()))
        self.file.write(arr.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
        self.num_tokens += arr.size

    def close(self) -> Path:
        self.file.seek(0)
        self.file.write(_header(self.dtype.itemsize, self.num_tokens, self.vocab_size, self.identity, self.max_id))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> TokenFileWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_token_file(path: str | Path, tokens: np.ndarray | list[int], vocab_size: int, identity: str) -> Path:
    with TokenFileWriter(path, vocab_size, identity) as w:
        w.write(tokens)
    return Path(path)


class TokenFile:
    """A token file opened for reading: header checked, tokens memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(HEADER_SIZE)
        except FileNotFoundError:
            raise UserError(f"token file {self.path} does not exist") from None
        if len(head) < _FIXED.size or head[:8] != MAGIC:
            raise UserError(f"{self.path} is not a token file (bad magic); re-create it with `python -m gpt.prepare`")
        _, version, itemsize, num_tokens, vocab_size, ident_len = _FIXED.unpack_from(head)
        if version != VERSION:
            newer = "it was made by a newer gpt: upgrade gpt" if version > VERSION else "re-create it with gpt.prepare"
            raise UserError(
                f"{self.path} has token-file format version {version}; this gpt reads version {VERSION}: {newer}"
            )
        if itemsize not in (2, 4) or ident_len > MAX_IDENTITY:
            raise UserError(f"{self.path} has a corrupt header; re-create it with `python -m gpt.prepare`")
        expected = HEADER_SIZE + num_tokens * itemsize
        if size != expected:
            raise UserError(
                f"{self.path} holds {size} bytes but its header promises {num_tokens} tokens ({expected} bytes): "
                "the file is truncated or corrupt; re-create it with `python -m gpt.prepare`"
            )
        self.num_tokens = num_tokens
        self.vocab_size = vocab_size
        self.identity = head[_FIXED.size : _FIXED.size + ident_len].decode("utf-8", errors="replace")
        self.dtype = np.dtype("<u2") if itemsize == 2 else np.dtype("<u4")
        self._map: np.memmap | None = None
        (max_id_plus_one,) = _MAX_ID.unpack_from(head, HEADER_SIZE - _MAX_ID.size)
        if max_id_plus_one > vocab_size:
            self.refuse_id(max_id_plus_one - 1)
        self.check_sample()

    def refuse_id(self, token_id: int, position: int | None = None) -> NoReturn:
        at = "" if position is None else f" (at token {position:,})"
        raise UserError(
            f"{self.path} holds token id {token_id:,}{at}, beyond its vocabulary of {self.vocab_size:,}: the file "
            "is corrupt or was written for another tokenizer; re-create it with `python -m gpt.prepare`"
        )

    def check_sample(self) -> None:
        """Check evenly spaced pieces of the tokens against the vocabulary (windows read later are
        checked too: this finds a bad file at start-up rather than mid-run)."""
        step = max(SAMPLE_PIECE_TOKENS, self.num_tokens // SAMPLE_PIECES)
        for start in range(0, self.num_tokens, step):
            piece = self.tokens[start : start + SAMPLE_PIECE_TOKENS]
            if piece.size and int(piece.max()) >= self.vocab_size:
                bad = int(np.argmax(piece >= self.vocab_size))
                self.refuse_id(int(piece[bad]), start + bad)
        self.release()

    @property
    def tokens(self) -> np.ndarray:
        if self._map is None:
            tokens = np.memmap(self.path, dtype=self.dtype, mode="r", offset=HEADER_SIZE, shape=(self.num_tokens,))
            if isinstance(tokens.base, mmap.mmap) and hasattr(mmap, "MADV_RANDOM"):
                tokens.base.madvise(mmap.MADV_RANDOM)  # reads are random windows: read-ahead only inflates memory
            self._map = tokens
        return self._map

    def will_need(self, start: int, count: int) -> None:
        """Start reading tokens [start, start + count) from disk now, without waiting (MADV_WILLNEED):
        the reads of a batch's windows then overlap instead of following one another."""
        base = self.tokens.base
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_WILLNEED"):
            lo = HEADER_SIZE + start * self.dtype.itemsize  # the mapping starts at the file's first byte
            aligned = lo - lo % mmap.PAGESIZE
            base.madvise(mmap.MADV_WILLNEED, aligned, lo + count * self.dtype.itemsize - aligned)

    def release(self) -> None:
        """Drop the mapping so the pages it brought in stop counting against this process."""
        self._map = None

    def __len__(self) -> int:
        return self.num_tokens


class TokenStream:
    """One or more token files read as a single sequence of tokens."""

    def __init__(self, paths: list[Path]):
        if not paths:
            raise UserError("no token files given")
        self.files = [TokenFile(p) for p in paths]
        first = self.files[0]
        for f in self.files[1:]:
            if f.identity != first.identity or f.vocab_size != first.vocab_size:
                raise UserError(
                    f"{f.path} was made by tokenizer {f.identity!r} (vocabulary {f.vocab_size}) but "
                    f"{first.path} by {first.identity!r} (vocabulary {first.vocab_size}); prepare them together"
                )
        self.identity = first.identity
        self.vocab_size = first.vocab_size
        self.offsets = np.cumsum([0] + [len(f) for f in self.files])  # start of each file in the stream
        self.itemsize = first.dtype.itemsize
        self._read_since_release = 0  # bytes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream as int64, crossing file boundaries if needed."""
        out = np.empty(length, dtype=np.int64)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        filled = 0
        while filled < length:
            local = start + filled - int(self.offsets[i])
            piece = self.files[i].tokens[local : local + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            i += 1
        self.check_ids(out[None], np.array([start]))
        return out

    def will_need(self, starts: np.ndarray, length: int) -> None:
        """Start reading the windows [start, start + length) from disk now, all at once."""
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        last = np.searchsorted(self.offsets, np.asarray(starts) + length - 1, side="right") - 1
        for start, i, j in zip(starts.tolist(), first.tolist(), last.tolist(), strict=True):
            for k in range(i, j + 1):  # the pieces of a window that crosses file boundaries
                lo = max(start, int(self.offsets[k]))
                self.files[k].will_need(lo - int(self.offsets[k]), min(start + length, int(self.offsets[k + 1])) - lo)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """A (len(starts), length) int64 array of windows."""
        # A read fault maps up to FAULT_AROUND bytes of neighbouring pages that are in the page cache.
        self._read_since_release += len(starts) * ((length * self.itemsize) // FAULT_AROUND + 2) * FAULT_AROUND
        if self._read_since_release > RESIDENT_BUDGET:  # keep resident memory flat on long runs over large files
            self.release()
        self.will_need(np.asarray(starts, dtype=np.int64), length)
        if len(self.files) == 1:  # one gather instead of a Python loop over windows
            index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)
            return self.check_ids(self.files[0].tokens[index].astype(np.int64), starts)
        return np.stack([self.window(int(s), length) for s in starts]).reshape(len(starts), length)

    def check_ids(self, windows: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The windows (rows starting at ``starts``), once every id is known to be within the vocabulary."""
        if windows.size and windows.max() >= self.vocab_size:
            row, col = np.argwhere(windows >= self.vocab_size)[0]
            position = int(starts[row]) + int(col)
            i = int(np.searchsorted(self.offsets, position, side="right")) - 1
            self.files[i].refuse_id(int(windows[row, col]), position - int(self.offsets[i]))
        return windows

    def release(self) -> None:
        """Unmap every file's pages; the next read maps them again."""
        self._read_since_release = 0
        for f in self.files:
            f.release()

    def check_model(self, vocab_size: int, identity: str | None = None) -> None:
        """Refuse data a model with this vocabulary (and tokenizer identity, when given) cannot read."""
        for f in self.files:
            if f.vocab_size > vocab_size:
                raise UserError(
                    f"{f.path} holds token ids of a vocabulary of {f.vocab_size:,} but the model's vocabulary is "
                    f"{vocab_size:,}; train on data made with the model's tokenizer (or model.vocab_size=0 to take it "
                    "from the data)"
                )
            if identity is not None and f.identity != identity:
                raise UserError(
                    f"{f.path} was made by tokenizer {f.identity!r} but the model uses {identity!r}; "
                    "prepare the data with the model's tokenizer"
                )

    def check_fits(self, block_size: int) -> None:
        if len(self) < block_size + 1:
            raise UserError(
                f"{self.files[0].path.parent} has only {len(self)} tokens in this split but model.block_size is "
                f"{block_size}: need at least block_size + 1 tokens; use a longer corpus or a smaller block_size"
            )


def split_files(folder: str | Path, split: str) -> list[Path]:
    """The token files of one split in a dataset folder: ``<split>.tok`` or shards ``<split>-*.tok``."""
    folder = Path(folder)
    return sorted(folder.glob(f"{split}.tok")) + sorted(folder.glob(f"{split}-*.tok"))
