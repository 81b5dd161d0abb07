"""Encoding units of work in order, in this process or in a pool of tokenizer processes that end
with the process that started them."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext

from gpt.prepare.documents import DocumentEncoder, Encoded, Task, encode_task
from gpt.tokenizer import Tokenizer, tokenizer_from_dict

_worker_encoder: DocumentEncoder | None = None


def _start_worker(tokenizer: dict, parent: int) -> None:
    global _worker_encoder
    _worker_encoder = DocumentEncoder(tokenizer_from_dict(tokenizer))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """End this worker once the process that started it is gone (killed with -9, say, it cannot shut
    the pool down): the worker would otherwise wait for tasks forever, since with fork it holds the
    task queue's writing end itself. A dead parent's children are adopted, so the parent id changes."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _run_task(task: Task) -> Encoded:
    assert _worker_encoder is not None
    return encode_task(_worker_encoder, task)


def worker_context() -> BaseContext:
    """Fork where there is fork: a tokenizer process then starts at once (it needs nothing but numpy and
    the tokenizer, and touches none of the parent's threads); spawn elsewhere."""
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


class Encoders:
    """Encodes tasks in order, in this process (num_proc 1) or in a pool with a bounded queue."""

    def __init__(self, tokenizer: Tokenizer, num_proc: int):
        self.encoder = DocumentEncoder(tokenizer)
        self.pool = None
        self.pending: deque[Future] = deque()
        self.limit = 2 * num_proc  # tasks in flight: keeps every process busy and memory bounded
        if num_proc > 1:
            self.pool = ProcessPoolExecutor(
                num_proc, mp_context=worker_context(), initializer=_start_worker,
                initargs=(tokenizer.to_dict(), os.getpid()),
            )  # fmt: skip

    def submit(self, task: Task) -> Iterator[Encoded]:
        """Queue a task; yields the results that are due, in submission order."""
        if self.pool is None:
            yield encode_task(self.encoder, task)
            return
        self.pending.append(self.pool.submit(_run_task, task))
        while len(self.pending) > self.limit:
            yield self.pending.popleft().result()

    def drain(self) -> Iterator[Encoded]:
        while self.pending:
            yield self.pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
