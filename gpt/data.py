"""The deterministic batch stream that training reads from token files (``gpt.token_files``).

The batch stream is a pure function of (seed, step): optimizer step ``s`` consumes a global batch of
``batch_size`` windows drawn with a generator seeded by (seed, s) (anywhere in the stream, or at
document starts with ``data.align=document``), and every process takes a
disjoint slice of it for each of its accumulation steps. The same run therefore sees the same data
whatever the number of processes and accumulation steps, and resuming at step s needs nothing but s.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from gpt.errors import UserError
from gpt.token_files import (  # noqa: F401 (re-exported: gpt.data has always offered the token files)
    HEADER_SIZE,
    TokenFile,
    TokenFileWriter,
    TokenStream,
    dtype_for_vocab,
    split_files,
    write_token_file,
)

if TYPE_CHECKING:  # torch loads where tensors are made: python -m gpt.prepare --help answers at once
    import torch

_EVAL_STREAM = 0x6576616C  # separates the eval windows' random stream from the training one


def step_window_starts(seed: int, step: int, batch_size: int, num_tokens: int, block_size: int) -> np.ndarray:
    """Start offsets of the global batch of optimizer step ``step``: a pure function of its arguments."""
    rng = np.random.default_rng((seed, step))
    return rng.integers(0, num_tokens - block_size, size=batch_size)


class DocumentStarts:
    """Offsets in a token stream where a document begins, for windows that start at one
    (``data.align=document``, as nanochat and modded-nanogpt train).

    A document begins at the start of each file and right after each end-of-text token. They are
    found once, when the stream is opened, by scanning the token files in pieces (memory stays flat),
    and kept as one compact array (4 bytes per document below 2^32 tokens). Only starts with a whole
    window of ``block_size + 1`` tokens after them are kept; a window may run on into the next
    document, as it does with random windows.
    """

    SCAN_TOKENS = 1 << 23  # tokens read at a time while scanning

    def __init__(self, stream: TokenStream, eot_id: int | None, block_size: int):
        where = stream.files[0].path.parent
        if eot_id is None:
            raise UserError(
                f"data.align=document needs documents, but {where} was prepared as one text without end-of-text "
                "tokens; prepare it from several documents (a folder, csv, jsonl or --sample_by paragraph), or use "
                "data.align=random"
            )
        found = [np.asarray(stream.offsets[:-1], dtype=np.int64)]  # each file starts a document
        for i, f in enumerate(stream.files):
            for lo in range(0, len(f), self.SCAN_TOKENS):
                piece = f.tokens[lo : lo + self.SCAN_TOKENS]
                found.append(np.flatnonzero(piece == eot_id).astype(np.int64) + (int(stream.offsets[i]) + lo + 1))
            f.release()
        starts = np.unique(np.concatenate(found))
        starts = starts[starts <= len(stream) - block_size - 1]
        if len(starts) < 2:
            raise UserError(
                f"data.align=document found {len(starts)} document start(s) in {where} with room for a window of "
                f"{block_size + 1} tokens; use data.align=random, more documents or a smaller model.block_size"
            )
        self.starts = starts.astype(np.uint32 if len(stream) < 2**32 else np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def step_starts(self, seed: int, step: int, batch_size: int) -> np.ndarray:
        """Start offsets of the global batch of optimizer step ``step``: documents drawn uniformly."""
        return self.draw(np.random.default_rng((seed, step)), batch_size)

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return self.starts[rng.integers(0, len(self.starts), size=count)].astype(np.int64)


def eval_window_starts(seed: int, split: int, n_windows: int, num_tokens: int, block_size: int) -> np.ndarray:
    """The fixed windows every evaluation of a run uses for one split."""
    rng = np.random.default_rng((seed, _EVAL_STREAM, split))
    return rng.integers(0, num_tokens - block_size, size=n_windows)


def to_inputs_targets(windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of block_size + 1 tokens -> inputs (B, T) and next-token targets (B, T)."""
    import torch

    w = torch.from_numpy(windows)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


class BatchStream:
    """Micro-batches for one process, step after step, built ahead of time on a background thread.

    Yields ``(x, y)`` for micro-step ``m`` of step ``s`` in order (s, m) from ``start_step`` on.
    Process ``rank`` of ``world`` takes windows ``[(m * world + rank) * b, ... + b)`` of the step's
    global batch, so every window is used once per step and no two processes share one.
    """

    def __init__(
        self,
        stream: TokenStream,
        *,
        seed: int,
        block_size: int,
        batch_size: int,
        micro_batch_size: int,
        rank: int,
        world: int,
        start_step: int,
        pin_memory: bool = False,
        prefetch: int = 4,
        documents: DocumentStarts | None = None,
        mixture=None,
    ):
        self.stream = stream
        self.seed, self.block_size = seed, block_size
        self.batch_size, self.micro = batch_size, micro_batch_size
        self.rank, self.world = rank, world
        self.accum = batch_size // (micro_batch_size * world)
        self.pin_memory = pin_memory
        self.documents = documents  # windows start at documents (data.align=document), else anywhere
        self.mixture = mixture  # several datasets by weight (gpt.mixture.Mixture): rows read from each
        self.step = start_step
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(start_step,), daemon=True)
        self._thread.start()

    def micro_batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo = (micro_step * self.world + self.rank) * self.micro
        if self.mixture is not None:
            which, starts = self.mixture.step_rows(step, self.batch_size)
            windows = self.mixture.windows(
                which[lo : lo + self.micro], starts[lo : lo + self.micro], self.block_size + 1
            )
        else:
            if self.documents is not None:
                starts = self.documents.step_starts(self.seed, step, self.batch_size)
            else:
                starts = step_window_starts(self.seed, step, self.batch_size, len(self.stream), self.block_size)
            windows = self.stream.windows(starts[lo : lo + self.micro], self.block_size + 1)
        x, y = to_inputs_targets(windows)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    def _fill(self, step: int) -> None:
        try:
            while not self._stop.is_set():
                for m in range(self.accum):
                    item = self.micro_batch(step, m)
                    while not self._stop.is_set():
                        try:
                            self._queue.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                step += 1
        except BaseException as e:  # surface loader errors in the training thread
            self._queue.put(e)

    def next_step(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``accum`` micro-batches of the next optimizer step."""
        for _ in range(self.accum):
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
        self.step += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
