"""Resuming in fp16 from a checkpoint without gradient scaler state (saved by a bf16 or fp32 run).

fp16 needs CUDA, so here a GradScaler is attached to the Accelerator by hand: accelerate's
save_state/load_state treat it exactly as the one of an fp16 run. The whole path through train.py
is in tests/e2e/test_cuda.py.
"""

import pytest
import torch
from accelerate import Accelerator

from gpt.precision import scaler_state_optional, starts_fresh_scaler


def test_only_a_run_with_a_scaler_resuming_a_checkpoint_without_one_starts_fresh(tmp_path):
    (tmp_path / "fp16").mkdir()
    (tmp_path / "fp16" / "scaler.pt").touch()
    (tmp_path / "bf16").mkdir()
    assert starts_fresh_scaler(tmp_path / "bf16", uses_scaler=True)
    assert not starts_fresh_scaler(tmp_path / "fp16", uses_scaler=True)
    assert not starts_fresh_scaler(tmp_path / "bf16", uses_scaler=False)
    assert not starts_fresh_scaler(tmp_path / "fp16", uses_scaler=False)


@pytest.fixture
def accelerator():
    accelerator = Accelerator()  # no arguments: agrees with any Accelerator made before in this process
    model = torch.nn.Linear(3, 2)
    accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    yield accelerator
    accelerator.scaler = None


def test_fp16_resume_of_a_checkpoint_without_scaler_state_keeps_a_fresh_scaler_and_says_so(
    accelerator, tmp_path, capsys
):
    saved = tmp_path / "bf16-checkpoint"
    accelerator.save_state(str(saved))  # no scaler: what a bf16 or fp32 run writes
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # now the run is an fp16 one
    with pytest.raises(FileNotFoundError):  # accelerate alone
        accelerator.load_state(str(saved))
    fresh = accelerator.scaler
    with scaler_state_optional(accelerator, saved):
        accelerator.load_state(str(saved))
    assert accelerator.scaler is fresh and fresh.get_scale() == 2.0**16
    assert "has no gradient scaler state" in capsys.readouterr().out


def test_fp16_resume_of_an_fp16_checkpoint_restores_its_scale(accelerator, tmp_path, capsys):
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    saved = tmp_path / "fp16-checkpoint"
    accelerator.save_state(str(saved))
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with scaler_state_optional(accelerator, saved):
        accelerator.load_state(str(saved))
    assert accelerator.scaler.get_scale() == 1024.0
    assert "has no gradient scaler state" not in capsys.readouterr().out
