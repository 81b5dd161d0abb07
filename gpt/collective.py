"""A process that stops answering ends the job, with a line that names it.

Every collective operation (the gradient all-reduce, a barrier) waits at most
``train.collective_timeout_s`` for the other processes (the process group's timeout). When it runs
out, the error torch raises names no process ("Timed out waiting 600000ms for recv operation"), so
the processes that saw it hold a roll call at the job's rendezvous store, which does not depend on
the stalled process: each that is still running checks in, and those that do not check in within
the roll-call time are the ones that stopped answering (stopped, hung, or gone). The lowest-ranked
process that checked in reports them on one line; every process that checked in exits with code 1,
and the launcher stops the rest.

With gloo (CPU) the timeout is an exception in Python and all of the above applies. With NCCL,
torch's watchdog ends a process whose collective timed out itself, with its own message naming the
operation and the rank that waited.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

import torch.distributed as dist

from gpt.errors import print_error

ROLL_CALL_MAX_S = 30.0  # processes that time out in the same operation do so within about a step of each other


def is_timeout(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and "timed out" in str(error).lower() and dist.is_initialized()


def roll_call(wait_s: float) -> list[int]:
    """Check in at the job's store and wait up to ``wait_s`` for the others; returns the ranks that
    did not check in."""
    store = dist.distributed_c10d._get_default_store()  # the rendezvous store, up while collectives are not
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # the store outlives a restart of the processes
    key = f"gpt/roll_call/{attempt}/{{}}".format
    store.set(key(dist.get_rank()), "here")
    missing, deadline = list(range(dist.get_world_size())), time.monotonic() + wait_s
    while True:
        missing = [rank for rank in missing if not store.check([key(rank)])]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


def timeout_message(missing: list[int], timeout_s: float) -> str:
    if not missing:
        return (
            f"an operation between the processes took longer than train.collective_timeout_s ({timeout_s:g} s), "
            "but every process answered afterwards: one was busy alone for longer; raise train.collective_timeout_s"
        )
    ranks = ", ".join(map(str, missing))
    return (
        f"rank {ranks} did not answer for train.collective_timeout_s ({timeout_s:g} s) (stopped, hung or gone); the "
        "job ends, resume it from the last checkpoint with resume=auto"
    )


def exit_on_timeout(timeout_s: float) -> NoReturn:
    """After a collective timed out: name the processes that did not answer (once for the job), exit 1."""
    missing = roll_call(min(timeout_s, ROLL_CALL_MAX_S))
    if dist.get_rank() == min(set(range(dist.get_world_size())) - set(missing)):
        print_error(timeout_message(missing, timeout_s))
    sys.exit(1)
