"""Batched decoding for a server: one background thread runs the model for every request.

A ``Job`` is one prompt of one request with ``n`` rows (its samples), decoded with one generator
seeded from the request's seed, exactly as ``sample_ids`` decodes ``num_samples`` rows: the tokens of
a job do not depend on which other jobs share its batch.

How jobs are batched. Rows in one forward pass must share the length of the key/value cache, so
jobs whose prompts have the same length in tokens (after cropping to block_size) start together as
one ``BatchDecoder``, a *cohort* (a batch). Jobs that arrive while cohorts are decoding start at the
next step in new cohorts, up to ``max_batches`` cohorts; every step, each cohort advances by one
token, so a short request need not wait for a long one to end. With ``max_batches`` cohorts running,
new jobs wait for one to end, then start together: fewer, larger forward passes (1: batch after
batch, the most throughput; more: new requests start sooner). A job leaves its cohort when it has
its tokens, when its consumer cancels it (a client that disconnected, every sample stopped), or
when its cohort fails; the others go on. At most ``max_batch`` rows are decoded at a time (the
memory bound). Jobs wait in arrival order.

The limits: prompts of different lengths are decoded in separate forward passes (no padding), and
a cohort's rows stay in its batch until they finish (later jobs never join a running cohort).
"""

from __future__ import annotations

import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gpt.generate import BatchDecoder, ContextMode, Sampling


@dataclass
class Job:
    """One prompt, decoded into ``n`` samples; ``emit`` is called from the decoding thread with
    ("tokens", [one token per sample]) after every step, then once ("end", None) or ("error", message)."""

    prompt_ids: list[int]
    n: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    emit: Callable[[str, object], None]
    cancelled: bool = False  # set by the consumer (it wants no more tokens): the job leaves its batch
    steps: int = 0  # tokens drawn per sample so far


@dataclass
class Cohort:
    decoder: BatchDecoder
    jobs: list[Job] = field(default_factory=list)


class Batcher:
    """Queue of jobs and the thread that decodes them (see the module doc)."""

    def __init__(
        self, model: torch.nn.Module, max_batch: int, max_batches: int = 2, context_mode: ContextMode = "auto"
    ):
        self.model = model
        self.max_batch = max_batch
        self.max_batches = max_batches
        self.context_mode = context_mode
        self.device = next(model.parameters()).device
        self.incoming: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.waiting: list[Job] = []  # taken from the queue, not yet admitted (no room)
        self.cohorts: list[Cohort] = []
        self.closing = False
        self.forward_passes = 0  # decoding steps run, one forward pass each, and the rows they decoded:
        self.rows_decoded = 0  # their ratio is the mean batch
        self.thread = threading.Thread(target=self._run, name="gpt-decoder", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.incoming.put(job)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def rows_in_flight(self) -> int:
        return sum(job.n for cohort in self.cohorts for job in cohort.jobs)

    def close(self) -> None:
        self.closing = True
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.closing:
            try:
                self._take_incoming(block=not self.cohorts and not self.waiting)
                self._admit()
                for cohort in list(self.cohorts):
                    self._step(cohort)
                self.cohorts = [c for c in self.cohorts if c.jobs]
            except Exception:  # a bug here must not leave requests waiting forever on a dead thread
                self._fail([job for c in self.cohorts for job in c.jobs] + self.waiting)
                self.cohorts, self.waiting = [], []

    def _take_incoming(self, block: bool) -> None:
        try:
            if block:  # idle: sleep until a job comes (waking now and then to notice close())
                self.waiting.append(self.incoming.get(timeout=0.5))
            while True:
                self.waiting.append(self.incoming.get_nowait())
        except queue.Empty:
            pass

    def _admit(self) -> None:
        """Start the waiting jobs that fit, in arrival order, one cohort per prompt length."""
        room = self.max_batch - self.rows_in_flight()
        admitted: dict[int, list[Job]] = {}
        while self.waiting and self.waiting[0].n <= room:
            job = self.waiting[0]
            length = min(len(job.prompt_ids), self.model.cfg.block_size)
            if length not in admitted and len(self.cohorts) + len(admitted) >= self.max_batches:
                break  # it waits for a cohort to end, and gathers the jobs that come meanwhile
            self.waiting.pop(0)
            if job.cancelled:
                continue
            if job.max_tokens == 0:
                job.emit("end", None)
                continue
            room -= job.n
            admitted.setdefault(length, []).append(job)
        for jobs in admitted.values():
            try:
                self.cohorts.append(Cohort(self._decoder(jobs), jobs))
            except Exception:  # a failed start fails these jobs, not the server
                self._fail(jobs)

    def _decoder(self, jobs: list[Job]) -> BatchDecoder:
        block_size = self.model.cfg.block_size
        prompt = torch.tensor(
            [job.prompt_ids[-block_size:] for job in jobs for _ in range(job.n)], dtype=torch.long, device=self.device
        )  # (rows, T0)
        groups = [(job.n, self._sampling(job)) for job in jobs]
        return BatchDecoder(self.model, prompt, groups, context_mode=self.context_mode)

    def _sampling(self, job: Job) -> Sampling:
        generator = torch.Generator(device=self.device).manual_seed(job.seed)  # as sample_ids seeds its batch
        return Sampling(job.temperature, job.top_k, job.top_p, generator)

    def _step(self, cohort: Cohort) -> None:
        """One token for every job of the cohort, then the finished and cancelled jobs leave it."""
        live = [i for i, job in enumerate(cohort.jobs) if not job.cancelled and job.steps < job.max_tokens]
        if len(live) < len(cohort.jobs):
            cohort.jobs = [cohort.jobs[i] for i in live]
            if not live:
                return
            cohort.decoder.keep(live)
        try:
            tokens = cohort.decoder.step().tolist()
            self.forward_passes += 1
            self.rows_decoded += len(tokens)
        except Exception:
            self._fail(cohort.jobs)
            cohort.jobs = []
            return
        start = 0
        for job in cohort.jobs:
            job.emit("tokens", tokens[start : start + job.n])
            start += job.n
            job.steps += 1
            if job.steps == job.max_tokens:
                job.emit("end", None)  # it leaves the batch before the next step

    @staticmethod
    def _fail(jobs: list[Job]) -> None:
        traceback.print_exc()
        for job in jobs:
            job.emit("error", "the model failed on this request; see the server log")
