"""The run folder's own files: the lock that keeps two trainings out of one out_dir, and metrics.jsonl.

The lock is an exclusive ``flock`` on ``out_dir/.lock``, taken by the main process for as long as
it trains. The operating system drops it when the holder exits, however it dies (kill -9 included),
so a stale lock never blocks a new start. Readers (``sample.py``, evaluation, a server) take no
lock: checkpoints appear and vanish whole (see ``gpt.checkpoint``).

metrics.jsonl gets one JSON object per line, each written whole with a single append (a write cut
short by a full disk is undone), with ``null`` for non-finite numbers so every line is strict JSON.
On start the log is repaired: a torn last line is dropped, and a resumed run drops the records
after the step it resumes from, which it is about to log again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from gpt.durable import atomic_write_text
from gpt.errors import UserError
from gpt.guards import disk_full_error

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"

_held: dict[tuple[int, str], RunLock] = {}  # (pid, out_dir): locks this process holds


class RunLock:
    """An exclusive lock on a run folder; ``release()`` (or the end of the process) frees it."""

    def __init__(self, out_dir: Path, fd: int | None):
        self.out_dir, self.fd, self.users = out_dir, fd, 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.fd is not None:
            _held.pop((os.getpid(), str(self.out_dir)), None)
            os.close(self.fd)  # closing the only descriptor drops the flock


def lock_run_dir(out_dir: str | Path, enabled: bool = True) -> RunLock:
    """Take the run folder for this process, or refuse with one line naming the holder. With
    ``enabled`` false (processes other than the main one) the lock is a stand-in that holds nothing."""
    folder = Path(out_dir).resolve()
    if not enabled:
        return RunLock(folder, None)
    key = (os.getpid(), str(folder))
    if key in _held:  # train() called again in the same process
        _held[key].users += 1
        return _held[key]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        holder = path.read_text().strip() or "another process"
        raise UserError(
            f"{out_dir} is in use by another training ({holder}); wait for it to end, stop it, or choose "
            "another out_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(
        fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
    )
    _held[key] = RunLock(folder, fd)
    return _held[key]


def strict_json(record: dict[str, Any]) -> str:
    """One JSON line; NaN and infinity (a step the fp16 scaler skipped, a diverging run) become null."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """metrics.jsonl in the run directory (main process), one JSON object per logging event."""

    def __init__(self, out_dir: str | Path, enabled: bool, resumed_step: int = 0):
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        if enabled and self.path.is_file():
            repair_metrics(self.path, resumed_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        data = strict_json(record).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            except OSError as e:
                os.ftruncate(fd, size)  # no torn line for the next run to append to
                failure = disk_full_error(e, str(self.path.parent), str(self.path))
                if failure is None:
                    raise
                raise failure from None
        finally:
            os.close(fd)


def repair_metrics(path: Path, resumed_step: int) -> None:
    """Drop a torn last line, and the records after ``resumed_step`` (the resumed run logs them again)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # cut short by a crash or a full disk
    kept = "".join(line for line in lines if (_step_of(line) or 0) <= resumed_step)
    if kept != text:
        atomic_write_text(path, kept)


def _step_of(line: str) -> int | None:
    try:
        step = json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None
    return step if isinstance(step, int) else None
