"""Resuming across mixed precisions: the fp16 gradient scaler.

An fp16 run scales its loss with a ``GradScaler`` whose state (the current scale, the steps since
it last grew) accelerate saves as ``scaler.pt`` and reloads on resume. A checkpoint of a bf16 or
fp32 run has no such file; resuming it in fp16 starts a fresh scaler (the scale is found again in
the first few steps) and says so, instead of accelerate's bare FileNotFoundError.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import SCALER_NAME


def starts_fresh_scaler(folder: Path, uses_scaler: bool) -> bool:
    """Whether a run with (``uses_scaler``) or without a gradient scaler must start a fresh one to
    resume from ``folder``: it has one and the checkpoint holds no scaler state."""
    return uses_scaler and not (folder / SCALER_NAME).is_file()


@contextmanager
def scaler_state_optional(accelerator: Accelerator, folder: Path) -> Iterator[None]:
    """Around ``accelerator.load_state(folder)``: where the checkpoint has no scaler state, the run
    keeps its fresh scaler (hidden from load_state for the call) and the log says so."""
    if not starts_fresh_scaler(folder, accelerator.scaler is not None):
        yield
        return
    accelerator.print(
        f"{folder} has no gradient scaler state (it was saved by a bf16 or fp32 run): "
        "fp16 training continues with a fresh scaler"
    )
    scaler, accelerator.scaler = accelerator.scaler, None
    try:
        yield
    finally:
        accelerator.scaler = scaler
