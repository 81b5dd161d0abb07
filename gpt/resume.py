"""Which checkpoint a run resumes from: the newest one that verifies, chosen once by the main process.

A damaged newest checkpoint (a file whose size or hash does not match the manifest, an unreadable
trainer state) is skipped with a warning naming what is wrong, and the run resumes from the newest
older one that verifies; one written by a newer gpt is refused instead. Only the main process hashes
files; the others get its verdict.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True), numpy's RNG state allowed

from gpt.checkpoint import (
    NewerFormatError,
    checkpoints_dir,
    complete_checkpoints,
    fault_point,
    read_trainer_state,
    verify,
)
from gpt.errors import UserError


def newest_verified(out_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint that verifies (manifest, hashes, trainer state), and what was
    wrong with each newer one. A checkpoint of a newer format is refused, not skipped."""
    problems = []
    for folder in reversed(complete_checkpoints(out_dir)):
        fault_point("resume.verify")
        try:
            verify(folder)
            read_trainer_state(folder)
        except NewerFormatError:
            raise
        except UserError as e:
            problems.append(str(e))
            continue
        return folder, problems
    return None, problems


def choose_resume(out_dir: str | Path, resume: str) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from under ``resume`` (auto|true|false) and notes to print about
    damaged newer ones; raises when nothing usable is there but something is required."""
    if resume == "false":
        existing = complete_checkpoints(out_dir)
        if existing:
            raise UserError(
                f"{out_dir} already holds checkpoints (newest: {existing[-1].name}); pass resume=auto to "
                "continue that run, or choose another out_dir"
            )
        return None, []
    folder, problems = newest_verified(out_dir)
    if folder is None and problems:
        older = f"; none of the {len(problems) - 1} older one(s) verifies either" if len(problems) > 1 else ""
        raise UserError(
            f"cannot resume: {problems[0]}{older}; restore the file from a copy, or move "
            f"{checkpoints_dir(out_dir)} away to start afresh"
        )
    if folder is None and resume == "true":
        raise UserError(f"resume=true but {out_dir} has no complete checkpoint; use resume=auto to start fresh")
    notes = [f"skipping a damaged checkpoint: {p}" for p in problems]
    if problems:
        notes.append(f"resuming from {folder.name}, the newest checkpoint that verifies")
    return folder, notes


def resume_point(out_dir: str, resume: str, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from: the main process verifies it (once, for all processes: hashing
    on every process could outlast a collective's timeout) and tells the others its verdict."""
    verdict: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            folder, notes = choose_resume(out_dir, resume)
            verdict = [(folder and str(folder), notes, None)]
        except UserError as e:
            verdict = [(None, [], str(e))]
    if accelerator.num_processes > 1:
        broadcast_object_list(verdict)
    folder, notes, error = verdict[0]
    if error:
        raise UserError(error)
    for note in notes if accelerator.is_main_process else []:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return Path(folder) if folder else None


def check_rng_state(folder: Path, rank: int) -> str | None:
    """Refuse an unreadable RNG file (accelerate would skip it silently and the resume would not be
    exact); return a warning when this process has none (the checkpoint was saved by fewer processes)."""
    path = folder / f"random_states_{rank}.pkl"
    if not path.is_file():
        return (
            f"warning: {folder} has no {path.name} (it was saved by fewer processes): process {rank} starts with "
            "fresh random states, so dropout will not match an uninterrupted run"
        )
    try:
        accelerate_load(path)
    except Exception as e:  # any unpickling failure: the file is damaged
        raise UserError(
            f"cannot resume exactly: {path} is unreadable ({type(e).__name__}); restore it, or delete this "
            "checkpoint to resume from an older one"
        ) from None
    return None
