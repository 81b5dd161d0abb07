"""Saving a training run's checkpoints and resuming from them, under accelerate (the layout on disk,
free of accelerate, is ``gpt.checkpoint``).

Saving: ``save`` refuses a diverged state, writes accelerate's ``save_state`` (optimizer, scaler, RNG
states; the weights under plain names, see ``register_weight_hooks``), the portable export and the
trainer state into a temporary folder, and publishes it atomically; a full disk is one line.

Resuming: ``resume_point`` chooses the newest checkpoint that verifies, once, on the main process.
A damaged newest checkpoint (a file whose size or hash does not match the manifest, an unreadable
trainer state) is skipped with a warning naming what is wrong, and the run resumes from the newest
older one that verifies; one written by a newer gpt is refused instead. Only the main process hashes
files; the others get its verdict. ``restore`` loads it into the prepared model and optimizer and
returns the ``RunState`` the loop continues from.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list
from accelerate.utils import load as accelerate_load  # torch.load(weights_only=True), numpy's RNG state allowed

from gpt import checkpoint as ckpt
from gpt import fsdp, guards, precision
from gpt.checkpoint import NewerFormatError, checkpoints_dir, complete_checkpoints, read_trainer_state, verify
from gpt.config import Config, resume_changes, to_dict
from gpt.errors import UserError
from gpt.faults import fault_point
from gpt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from gpt.trainer import Run


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


# ----------------------------------------------------------------------------------------------
# Restoring


@dataclass
class RunState:
    """Where the loop continues from: a fresh run's start, or what a checkpoint's trainer state says."""

    step: int = 0
    wandb_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the evaluation stored with the checkpoint
    elapsed_s: float = 0.0  # wall-clock seconds spent by earlier attempts, for train.time_budget_s
    spike_guard: dict | None = None  # the spike guard's window and skipped count


def register_weight_hooks(accelerator: Accelerator) -> None:
    """Make save_state/load_state keep weights under plain names (no ``module.``/``_orig_mod.``),
    so a checkpoint loads whatever wraps the model on resume: DDP or not, compiled or not."""

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for i, state in enumerate(weights):
            weights[i] = ckpt.clean_state_dict(state)

    def load_hook(models: list, input_dir: str) -> None:
        for m in models:
            ckpt.load_into(accelerator.unwrap_model(m, keep_torch_compile=False), Path(input_dir) / ckpt.WEIGHTS)
        models.clear()  # loaded here; accelerate loads the optimizer, scaler and RNG states

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def restore(accelerator: Accelerator, folder: Path, cfg: Config, tokenizer: Tokenizer) -> RunState:
    """Load a checkpoint (verified by ``resume_point``) into the prepared model and optimizer (the
    hooks above registered) and say which settings changed; returns the state the run continues from.
    ``cfg.model`` is the resolved model config (its vocab_size filled)."""
    state = ckpt.read_trainer_state(folder)
    saved_config = state["config"] | {"model": state["config"]["model"] | {"vocab_size": state["vocab_size"]}}
    ckpt.check_same_model(saved_config["model"], cfg.model, folder)
    if state["tokenizer"] != tokenizer.identity:
        raise UserError(
            f"cannot resume from {folder}: it was trained with tokenizer {state['tokenizer']!r} but the data uses "
            f"{tokenizer.identity!r}; use the same data.dataset as the checkpoint"
        )
    fsdp.check_checkpoint_fits(folder, fsdp_run=accelerator.distributed_type == DistributedType.FSDP)
    if warning := check_rng_state(folder, accelerator.process_index):
        print(warning, file=sys.stderr, flush=True)
    fault_point("resume.load")
    with precision.scaler_state_optional(accelerator, folder):  # fp16 resuming a bf16/fp32 run: fresh scaler
        accelerator.load_state(str(folder))
    # load_state restores accelerate's micro-step counter, counted in the saved run's accumulation
    # steps; checkpoints fall on optimizer-step boundaries, so it restarts at zero (elastic resume).
    accelerator.step = 0
    if accelerator.is_main_process:
        print(f"resumed from {folder} at step {state['step']}", flush=True)
        if changes := resume_changes(saved_config, cfg):  # e.g. a new learning rate: said, not silent
            print(changes, flush=True)
    return RunState(
        step=state["step"],
        wandb_id=state.get("wandb_id"),
        metrics=state.get("metrics", {}),
        elapsed_s=float(state.get("elapsed_s", 0.0)),
        spike_guard=state.get("spike_guard"),
    )


# ----------------------------------------------------------------------------------------------
# Saving


def save(run: Run, step: int, wandb_id: str | None, metrics: dict[str, float], elapsed_s: float = 0.0) -> Path:
    """Save a checkpoint of ``step`` (call on every process), never of a diverged state; a full disk
    is one line (see gpt.guards)."""
    cfg, accelerator = run.cfg, run.accelerator
    run.watch.check(accelerator, run.model, step, cfg.out_dir, cfg.train.learning_rate)
    tmp = ckpt.tmp_dir(cfg.out_dir, step)
    try:
        final = write_checkpoint(run, tmp, step, wandb_id, metrics, elapsed_s)
    except Exception as e:
        failure = guards.disk_full_error(
            e, cfg.out_dir, f"checkpoint {tmp}", tmp if accelerator.is_main_process else None
        )
        if failure is None:
            raise
        raise failure from None
    fault_point("save.done", step)
    return final


def write_checkpoint(run: Run, tmp: Path, step: int, wandb_id: str | None, metrics: dict, elapsed_s: float) -> Path:
    cfg, accelerator = run.cfg, run.accelerator
    if accelerator.is_main_process:
        ckpt.begin_save(cfg.out_dir, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.distributed_type == DistributedType.FSDP:  # sharded on disk: gather a full copy to export
        full = accelerator.get_state_dict(run.model)
        if accelerator.is_main_process:
            ckpt.save_weights(full, tmp / ckpt.WEIGHTS)
    fault_point("save.state", step)
    accelerator.wait_for_everyone()  # every process has written its files (RNG state, shards) before the rename
    final = ckpt.checkpoints_dir(cfg.out_dir) / ckpt.step_dir_name(step)
    if accelerator.is_main_process:
        meta = {"step": step, "tokens_seen": step * cfg.train.batch_size * cfg.model.block_size, **metrics}
        ckpt.write_export(tmp / ckpt.EXPORT_DIR, tmp / ckpt.WEIGHTS, cfg.model, run.tokenizer, meta)
        fault_point("save.export", step)
        state = {
            "step": step,
            "config": to_dict(cfg),
            "vocab_size": cfg.model.vocab_size,
            "tokenizer": run.tokenizer.identity,
            "world_size": accelerator.num_processes,
            "wandb_id": wandb_id,
            "metrics": metrics,
            # the data position: step s of the sample stream is a function of (seed, s) alone
            "sample_stream": {"seed": cfg.seed, "next_step": step, "batch_size": cfg.train.batch_size},
            "elapsed_s": elapsed_s,  # wall clock spent so far, for train.time_budget_s
            "spike_guard": run.guard.state() if run.guard else None,  # its window and skipped count
        }
        final = ckpt.finish_save(tmp, cfg.out_dir, step, state, cfg.train.keep_last, cfg.train.keep_best)
    accelerator.wait_for_everyone()
    return final
