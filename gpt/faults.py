"""The declared fault-injection hook: named points in training, saving and resuming where the tests
make a process die, crash or find a full disk. Nothing else reads ``GPT_FAULT``, and no test needs to
replace a function of the trainer to inject a fault.

``GPT_FAULT=PHASE[@STEP]:ACTION[:rank=R][:attempt=A][,...]`` makes the point named PHASE (at optimizer
step STEP, or at any step) do ACTION:

- ``kill``: SIGKILL this process (a power cut, an out-of-memory kill);
- ``exit``: end it at once with exit status 13, running no clean-up (a crashed process);
- ``enospc``: raise the OSError of a full disk;
- ``crash``: raise RuntimeError.

``rank=R`` limits the fault to the process whose ``RANK`` is R; ``attempt=A`` to the launcher's
restart A (``TORCHELASTIC_RESTART_COUNT``, 0 on the first attempt), so a restarted job can resume.
"""

from __future__ import annotations

import errno
import os
import signal

FAULT_ENV = "GPT_FAULT"
EXIT_STATUS = 13  # of the exit action
PHASES = (
    "train.step",  # after optimizer step STEP, before its logging, evaluation and checkpoint
    "save.begin", "save.state", "save.export", "save.manifest", "save.publish", "save.latest", "save.rotate",
    "save.done",  # the checkpoint of STEP is complete on every process
    "resume.verify", "resume.load",
)  # fmt: skip


def fault_point(phase: str, step: int | None = None) -> None:
    """A declared fault-injection point; does nothing unless ``GPT_FAULT`` names it (see the module doc)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for fault in spec.split(","):
        where, action, *limits = fault.split(":")
        name, _, at = where.partition("@")
        if name != phase or (at and step != int(at)) or not all(_applies(limit) for limit in limits):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "exit":
            os._exit(EXIT_STATUS)
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"(injected at {phase})")
        if action == "crash":
            raise RuntimeError(f"injected crash at {phase}" + (f" step {step}" if step is not None else ""))


def _applies(limit: str) -> bool:
    """Whether a ``rank=R`` or ``attempt=A`` limit holds for this process."""
    key, _, value = limit.partition("=")
    env = {"rank": "RANK", "attempt": "TORCHELASTIC_RESTART_COUNT"}.get(key)
    if env is None:
        raise ValueError(f"{FAULT_ENV}: unknown limit {limit!r}; use rank=R or attempt=A")
    return os.environ.get(env, "0") == value
