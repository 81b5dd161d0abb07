"""The launcher's exit code for the job from torch elastic's failures (gpt.launch; no processes started)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

from gpt.launch import SignalForwarder, failures_exit_code


def failure(exitcode: int, timestamp: int = 0, error: str | None = None) -> SimpleNamespace:
    reported = {"one_line_error": error} if error else {}
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, error_file_data=reported)


def test_the_job_exit_code_is_the_first_process_to_fail_by_itself(capsys):
    # rank 1 saved and exited 75; the agent then stopped rank 0 with SIGTERM while it was exiting
    assert failures_exit_code({0: failure(-signal.SIGTERM), 1: failure(75)}) == 75
    assert capsys.readouterr().err == ""  # the processes said why they stopped
    assert failures_exit_code({0: failure(1, timestamp=2), 1: failure(3, timestamp=1)}) == 3
    assert "rank 1 failed with exit code 3" in capsys.readouterr().err


def test_bad_input_from_every_process_is_printed_once_and_a_different_one_with_its_rank(capsys):
    same = {0: failure(2, error="bad key"), 1: failure(2, error="bad key")}
    assert failures_exit_code(same) == 2
    assert capsys.readouterr().err == "error: bad key\n"
    different = {0: failure(2, error="bad key"), 1: failure(2, error="no data on this machine")}
    assert failures_exit_code(different) == 2
    assert capsys.readouterr().err == "error: bad key\nerror (rank 1): no data on this machine\n"


def test_a_process_killed_by_the_stop_signal_passed_on_counts_as_stopped():
    forwarder = SimpleNamespace(received=[signal.SIGINT])  # Ctrl-C, passed on as SIGTERM
    code = SignalForwarder.job_exit_code
    forwarder.to_send = lambda i: SignalForwarder.to_send(forwarder, i)
    assert code(forwarder, 128 + signal.SIGTERM) == 75  # it had not installed its handler yet
    assert code(forwarder, 75) == 75 and code(forwarder, 0) == 0 and code(forwarder, 1) == 1
    forwarder.received.append(signal.SIGINT)  # a second Ctrl-C aborts
    assert code(forwarder, 128 + signal.SIGINT) == 130
    assert SignalForwarder.to_send(forwarder, 1) == signal.SIGINT
