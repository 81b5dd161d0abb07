"""What keeps a bad moment from costing good checkpoints: a diverged state is never saved, and a full
disk is one line that says what survived.

``FiniteWatch`` counts, on the device, the steps whose loss (or gradient norm) was not finite, so the
hot path never waits for the device; the count is read before every save (preemption saves too) and
at log steps. A diverged run therefore never writes a NaN checkpoint, and never rotates away the
good ones: it stops and names the last good checkpoint.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch

from gpt import checkpoint as ckpt
from gpt.durable import bytes_on_disk
from gpt.errors import UserError


class FiniteWatch:
    """Counts non-finite steps on the device; ``check`` reads the count (a device sync) before a save."""

    def __init__(self, device: torch.device, fp16: bool):
        self.bad_steps = torch.zeros((), device=device, dtype=torch.int64)
        self.fp16 = fp16  # the scaler skips steps with non-finite gradients: those are not divergence
        self.skipped_steps = 0  # optimizer steps the fp16 scaler skipped
        self.checked_step = 0  # the last step known to be finite

    def after_step(self, loss: torch.Tensor, grad_norm: torch.Tensor | float | None, skipped: bool) -> None:
        """Count this step if its loss, or (unless the fp16 scaler skipped it) its grad norm, is not finite."""
        self.bad_steps += ~torch.isfinite(loss)
        if skipped:
            self.skipped_steps += 1
        elif not self.fp16 and grad_norm is not None:  # None: a backend that does not report it
            self.bad_steps += ~torch.isfinite(torch.as_tensor(grad_norm, device=self.bad_steps.device))

    def check(self, accelerator, model: torch.nn.Module, step: int, out_dir: str, lr: float) -> None:
        """Raise the divergence error if any step so far, on any process, or any weight is not finite."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]  # FSDP: the shard
        bad_weights = torch.stack([~torch.isfinite(t).all() for t in local]).sum()
        flags = accelerator.reduce(torch.stack([self.bad_steps, bad_weights]).float(), reduction="sum")
        if flags.sum().item() > 0:
            raise diverged(out_dir, self.checked_step, step, lr)
        self.checked_step = step


def diverged(out_dir: str, good_step: int, step: int, lr: float) -> UserError:
    """The one line for a run whose loss, gradient norm or weights stopped being finite."""
    last = ckpt.latest_checkpoint(out_dir)
    saved = (
        f"the last good checkpoint is {last} (nothing after step {good_step} was saved)"
        if last
        else "no checkpoint was saved"
    )
    how = "resume from it with other settings: run again with" if last else "start again with"
    return UserError(
        f"training diverged: the loss, gradient norm or weights became NaN or infinite between steps "
        f"{good_step} and {step}; {saved}; {how} out_dir={out_dir} and a lower train.learning_rate (now {lr:.3g}), "
        "a train.grad_clip, or bf16 instead of fp16"
    )


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether an exception (or one it came from) is a full disk or quota. torch's writer reports it
    as 'file write failed' without errno, so that counts when the disk is (nearly) full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        if "write failed" in text and shutil.disk_usage(folder).free < 64 << 20:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(exc: BaseException, out_dir: str, writing: str, partial: Path | None = None) -> UserError | None:
    """One line for a full disk while writing ``writing`` (None if ``exc`` is something else);
    removes the ``partial`` folder the failed save left, to give the space back."""
    root = ckpt.checkpoints_dir(out_dir)
    probe = root if root.is_dir() else Path(out_dir)
    if not is_disk_full(exc, probe):
        return None
    written = bytes_on_disk(partial) if partial is not None and partial.is_dir() else 0
    if partial is not None:
        shutil.rmtree(partial, ignore_errors=True)
    last = ckpt.latest_checkpoint(out_dir)
    needed = bytes_on_disk(last) if last else written
    kept = (
        f"the checkpoint {last} is intact: free space and run the same command again to resume from it"
        if last
        else "no checkpoint was kept yet: free space and run the same command again"
    )
    return UserError(
        f"no space left on the disk of {probe} while writing {writing} (a checkpoint needs about "
        f"{_mib(needed)}, {_mib(shutil.disk_usage(probe).free)} free); {kept}"
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"
