"""gpt.faults: the declared fault-injection hook (GPT_FAULT) the reliability tests use."""

import errno
import subprocess
import sys

import pytest

from gpt.faults import fault_point

from conftest import ROOT, env


def test_without_gpt_fault_a_point_does_nothing(monkeypatch):
    monkeypatch.delenv("GPT_FAULT", raising=False)
    fault_point("save.done", 10)


def test_a_fault_fires_at_its_phase_and_step_only(monkeypatch):
    monkeypatch.setenv("GPT_FAULT", "save.done@10:crash,save.state:enospc")
    fault_point("save.done", 9)
    fault_point("save.begin", 10)
    with pytest.raises(RuntimeError, match="injected crash at save.done step 10"):
        fault_point("save.done", 10)
    with pytest.raises(OSError) as e:
        fault_point("save.state", 3)  # no step given: at any step
    assert e.value.errno == errno.ENOSPC


def test_rank_and_attempt_limits(monkeypatch):
    monkeypatch.setenv("GPT_FAULT", "train.step@3:crash:rank=1:attempt=0")
    monkeypatch.setenv("RANK", "0")
    fault_point("train.step", 3)  # another rank
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    fault_point("train.step", 3)  # a restarted attempt
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT")  # unset: the first attempt
    with pytest.raises(RuntimeError):
        fault_point("train.step", 3)


def test_exit_ends_the_process_at_once_with_its_status():
    code = "from gpt.faults import fault_point; fault_point('train.step', 2); print('not reached')"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env(GPT_FAULT="train.step@2:exit"), capture_output=True, text=True
    )
    assert r.returncode == 13 and "not reached" not in r.stdout
