"""The guards of a training step: a full disk named with what survived, divergence counted."""

from __future__ import annotations

import math

from gpt import checkpoint as ckpt
from gpt.errors import UserError


def test_a_full_disk_names_what_survived(tmp_path):
    from gpt.guards import disk_full_error

    folder = tmp_path / "run" / "checkpoints" / "step-0000010"
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(b"x" * 4096)
    ckpt.write_manifest(folder)
    partial = tmp_path / "run" / "checkpoints" / ".tmp-step-0000020"
    partial.mkdir()
    error = disk_full_error(OSError(28, "No space left on device"), str(tmp_path / "run"), "checkpoint 20", partial)
    assert isinstance(error, UserError) and not partial.exists()
    assert f"the checkpoint {folder} is intact" in str(error) and "MiB free" in str(error)
    assert disk_full_error(ValueError("something else"), str(tmp_path / "run"), "x") is None


def test_the_finite_watch_counts_divergence_but_not_steps_the_fp16_scaler_skipped():
    import torch

    from gpt.guards import FiniteWatch

    fp32, fp16 = FiniteWatch(torch.device("cpu"), fp16=False), FiniteWatch(torch.device("cpu"), fp16=True)
    for watch in (fp32, fp16):
        watch.after_step(torch.tensor(2.0), torch.tensor(1.0), skipped=False)
        watch.after_step(torch.tensor(2.0), torch.tensor(math.inf), skipped=watch.fp16)
    assert fp32.bad_steps.item() == 1 and fp16.bad_steps.item() == 0 and fp16.skipped_steps == 1
    fp16.after_step(torch.tensor(math.nan), torch.tensor(1.0), skipped=False)
    assert fp16.bad_steps.item() == 1  # a NaN loss is divergence under any precision
