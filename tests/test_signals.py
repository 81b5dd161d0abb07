"""The stop-signal handlers in one process (gpt.signals): a stop signal outside the training loop exits 75,
inside it is noted for the loop, and the handlers are removed afterwards."""

from __future__ import annotations

import os
import signal
import time

import pytest

from gpt import signals


@pytest.fixture
def stop_request():
    stop = signals.StopRequest(watch_parent=False)
    yield stop
    stop.uninstall()


def deliver(sig: int) -> None:
    """Signal this process and let the handler run (CPython runs it in the main thread, between bytecodes)."""
    os.kill(os.getpid(), sig)
    for _ in range(1000):
        time.sleep(0.001)


def test_outside_the_training_loop_a_stop_signal_exits_75_at_once(stop_request, capsys):
    with pytest.raises(SystemExit) as exited:
        deliver(signal.SIGUSR1)  # as during start-up or the final evaluation
    assert exited.value.code == 75 and stop_request.signum == signal.SIGUSR1
    assert "stopped by SIGUSR1 outside the training loop" in capsys.readouterr().out


def test_in_the_training_loop_a_stop_signal_is_noted_and_a_second_ctrl_c_aborts(stop_request):
    stop_request.deferring = True
    deliver(signal.SIGINT)
    deliver(signal.SIGTERM)  # the launcher passing the same stop on: noted already, nothing more
    assert stop_request.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        deliver(signal.SIGINT)
    stop_request.deferring = False
    with pytest.raises(SystemExit):  # after the loop: still requested, so it exits (the checkpoint is saved)
        stop_request.exit_if_requested()


def test_the_handlers_are_removed_after_training_called_from_python():
    before = signal.getsignal(signal.SIGTERM)
    with signals.stop_signals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    assert signal.getsignal(signal.SIGTERM) == before
