"""Stop requests: SIGTERM, SIGINT, SIGUSR1, or the loss of the launcher, turned into a saved checkpoint
and exit code 75.

Schedulers send SIGTERM before preempting a job (Docker, Kubernetes, SLURM) and SIGUSR1 at a time
limit (``sbatch --signal``); a person presses Ctrl-C (SIGINT). All three mean the same: stop soon,
keep the work. How soon depends on what the process is doing:

- in the training loop the signal only sets a flag; the loop notices it after the current step
  (every process agrees through a collective), saves a checkpoint and exits with ``EXIT_PREEMPTED``;
- anywhere else (start-up, the final evaluation) there is nothing new to save, so the process exits
  with ``EXIT_PREEMPTED`` at once; a restart does what was left (the final evaluation included).

A second SIGINT while a stop is under way aborts at once (KeyboardInterrupt), without saving.

A training process started by a launcher also watches it: if the launcher dies (killed, or by a
signal it does not handle, as ``accelerate launch`` does with SIGUSR1), the process stops as if it
had received SIGTERM instead of training on, orphaned, with nobody to report to.

This module imports nothing heavy, so an entry point can install the handlers before torch loads.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

EXIT_PREEMPTED = 75  # stopped by a stop request with the work saved: run again (resume=auto) to continue
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
PARENT_POLL_S = 1.0


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def started_by_launcher() -> bool:
    """Whether a launcher started this process: torchrun and accelerate's multi-process launcher set
    LOCAL_RANK, accelerate's single-process launcher sets ACCELERATE_USE_CPU. A process run by hand
    (``nohup python train.py &``) must outlive the shell that started it, so it does not watch."""
    return "LOCAL_RANK" in os.environ or "ACCELERATE_USE_CPU" in os.environ


def is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


class StopRequest:
    """The stop signals of this process. ``signum`` is the first stop signal received, or None.

    While ``deferring`` (the training loop) a stop signal only sets ``signum`` for the loop to act on;
    otherwise it exits at once with EXIT_PREEMPTED.
    """

    def __init__(self, watch_parent: bool) -> None:
        self.signum: int | None = None
        self.deferring = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        if watch_parent:
            parent = os.getppid()
            threading.Thread(target=self._watch_parent, args=(parent,), name="watch-launcher", daemon=True).start()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abort now
        if self.signum is None:
            self.signum = signum
        if not self.deferring:
            self.exit_now()

    def exit_now(self) -> None:
        if is_main_rank():
            print(f"stopped by {signal_name(self.signum)} outside the training loop: nothing new to save; "
                  "run again (resume=auto) to continue", flush=True)  # fmt: skip
        sys.exit(EXIT_PREEMPTED)

    def _watch_parent(self, parent: int) -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:  # re-parented: the launcher exited
                with contextlib.suppress(OSError):  # the launcher may have held our output pipe
                    print(f"the launcher (pid {parent}) is gone: stopping as on SIGTERM", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    def exit_if_requested(self) -> None:
        """Exit now if a stop signal came while deferring (call after the training loop)."""
        if self.signum is not None:
            self.exit_now()

    def agreed(self, accelerator: Any, check: bool) -> str | None:
        """The name of a stop signal received by any process, or None. Processes agree through a
        collective, so with several it is only asked when ``check`` is true (at logging, evaluation
        and checkpoint steps); every process must pass the same ``check``."""
        if accelerator.num_processes == 1:
            return None if self.signum is None else signal_name(self.signum)
        if not check:
            return None
        import torch

        mine = torch.tensor([self.signum or 0], device=accelerator.device, dtype=torch.int64)
        signum = int(accelerator.reduce(mine, reduction="max").item())  # any process's: named on rank 0 too
        return None if signum == 0 else signal_name(signum)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


_installed: StopRequest | None = None


def catch_stop_signals() -> StopRequest:
    """Install this process's stop-signal handlers (once; they stay for the life of the process).
    Entry points call it first thing, so a signal during start-up is handled too."""
    global _installed
    if _installed is None:
        _installed = StopRequest(watch_parent=started_by_launcher())
    return _installed


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """The process's StopRequest: the one the entry point installed, else one installed for the
    duration (so that training called from Python leaves the caller's handlers as they were)."""
    global _installed
    if _installed is not None:
        yield _installed
        return
    stop = _installed = StopRequest(watch_parent=False)
    try:
        yield stop
    finally:
        stop.uninstall()
        _installed = None
