"""``accelerate launch``, ending the way a job should: python -m gpt.launch [accelerate launch options] train.py ...

    python -m gpt.launch train.py                                   # as `accelerate launch train.py`
    python -m gpt.launch --config_file launch/single_node.yaml train.py shakespeare_char

It takes accelerate launch's options (``--help`` lists them) and runs accelerate's own launcher in
this process; what differs is how the job ends:

- Stop signals (SIGTERM from Docker, Kubernetes or SLURM, SIGUSR1 at a SLURM time limit, Ctrl-C)
  go to the training processes, which save a checkpoint and exit with code 75. accelerate's
  launcher, given them itself, dies of SIGUSR1 (leaving its processes to train on, orphaned), and
  on SIGTERM or SIGINT stops its processes with a deadline (5 s with one process, 30 s with
  several) and exits 143 or 130. A second Ctrl-C is passed on as SIGINT: the processes abort at
  once, without saving.
- The exit code is the training processes': 0 done, 2 bad input, 75 stopped with the work saved
  (resume with the same command), 130 aborted. accelerate's launcher turns any of them into 1 and
  adds its own traceback.
- An error raised by every process of the job (bad input, say) is printed once, on one line.

How: the launcher runs on a thread, so neither accelerate nor torch's elastic agent installs its
signal handlers (both install them only on the main thread); this process keeps its own and sends
each stop signal to its child processes, which are the training processes in both of accelerate's
local launchers (one process: a plain subprocess; several: torch's elastic agent, run in-process).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from typing import Any

import psutil

from gpt.errors import ERROR_FILE_KEY, EXIT_INTERRUPTED, LAUNCHER_REPORTS_ERRORS, ArgumentParser, run_main
from gpt.signals import EXIT_PREEMPTED, STOP_SIGNALS, signal_name

POLL_S = 0.1  # how often the main thread passes pending signals on to new child processes


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def failures_exit_code(failures: dict[int, Any]) -> int:
    """The job's exit code from torch elastic's failed processes (global rank -> ProcessFailure).

    The one-line errors the processes reported (gpt.errors.print_error: bad input, a process that
    stopped answering) are printed once each, in rank order. The code is that of the first process
    to fail by itself: one killed by a signal is most likely one the agent stopped after another
    had failed.
    """
    printed = []
    for rank in sorted(failures):
        message = (failures[rank].error_file_data or {}).get(ERROR_FILE_KEY)
        if message is not None and message not in printed:
            print(f"error: {message}" if not printed else f"error (rank {rank}): {message}", file=sys.stderr)
            printed.append(message)
    rank, first = min(failures.items(), key=lambda item: (item[1].exitcode < 0, item[1].timestamp, item[0]))
    code = exit_status(first.exitcode)
    if not printed and code not in (EXIT_PREEMPTED, EXIT_INTERRUPTED):  # those processes said why themselves
        print(f"training process of rank {rank} failed with exit code {code}", file=sys.stderr)
    return code


def run_launcher(args: Any) -> int:
    """accelerate's launcher for the parsed arguments; returns the training processes' exit code."""
    from accelerate.commands.launch import launch_command
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        launch_command(args)
        return 0
    except subprocess.CalledProcessError as e:  # one process: its output has already been passed through
        return exit_status(e.returncode)
    except ChildFailedError as e:  # several
        return failures_exit_code(e.failures)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception:
        traceback.print_exc()
        return 1


class SignalForwarder:
    """Receives this process's stop signals and passes each on, once, to every child process.

    The first stop signal is a stop request: SIGTERM and SIGUSR1 go on as they are, SIGINT as
    SIGTERM (a child in our process group already got the terminal's SIGINT; a second would abort
    it). A SIGINT after that goes on as SIGINT: abort. The main thread's loop also calls ``deliver``,
    to reach children started after the signal came; a signal sent twice does no harm.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.delivered: dict[int, int] = {}  # child pid -> how many of ``received`` it has been sent
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.received
        self.received.append(signum)
        if first:
            print(f"got {signal_name(signum)}: the training processes save after their current step and exit "
                  "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)  # fmt: skip
        self.deliver()

    def to_send(self, index: int) -> int:
        signum = self.received[index]
        if signum == signal.SIGINT and index == 0:
            return signal.SIGTERM
        return signum

    def deliver(self) -> None:
        if not self.received:
            return
        for child in psutil.Process().children():
            for index in range(self.delivered.get(child.pid, 0), len(self.received)):
                try:
                    child.send_signal(self.to_send(index))
                except psutil.NoSuchProcess:
                    break
            self.delivered[child.pid] = len(self.received)

    def job_exit_code(self, code: int) -> int:
        """The training processes' code, except that one killed by the stop signal we sent (it came
        before the process installed its handler, during start-up: nothing to save) counts as stopped."""
        stop_codes = {128 + self.to_send(i) for i in range(len(self.received))} - {128 + signal.SIGINT}
        return EXIT_PREEMPTED if code in stop_codes else code


def main(argv: list[str]) -> int:
    forwarder = SignalForwarder()  # first: accelerate takes seconds to import
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    parser.prog = "python -m gpt.launch"
    parser.error = lambda message: ArgumentParser.error(parser, message)  # one line, as every command's
    args = parser.parse_args(argv)
    args.quiet = False  # with --quiet accelerate exits 1 itself, hiding the processes' code; we print no traceback
    os.environ[LAUNCHER_REPORTS_ERRORS] = "1"
    # the elastic agent's log lines about each process's exit and its own signal handling: this
    # command reports the outcome itself (failures_exit_code)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    if forwarder.received:  # stopped before anything started
        return EXIT_PREEMPTED
    outcome: dict[str, int] = {}
    launcher = threading.Thread(target=lambda: outcome.update(code=run_launcher(args)), name="launcher", daemon=True)
    launcher.start()
    while launcher.is_alive():
        launcher.join(POLL_S)
        forwarder.deliver()
    return forwarder.job_exit_code(outcome.get("code", 1))


if __name__ == "__main__":
    run_main(main)
