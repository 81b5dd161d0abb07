"""The training loop, built on ``accelerate.Accelerator``.

Everything about devices, processes and precision goes through the Accelerator: ``prepare``,
``accumulate``, ``backward``, ``clip_grad_norm_``, ``reduce``, ``save_state``/``load_state`` and the
W&B tracker. What the loop owns itself is the data (a pure function of seed and step, see
``gpt.data``), the learning-rate schedule (a pure function of the step) and the checkpoint layout
(``gpt.checkpoint``); so a resumed run, or one split differently over processes, sees the same
batches and learning rates at every step.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, GradientAccumulationPlugin, ProjectConfiguration, set_seed
from torch.nn import functional as F

from gpt import checkpoint as ckpt
from gpt import fsdp, hf, perf
from gpt.budget import TimeBudget
from gpt.config import Config, ModelConfig, TrainConfig, resume_changes, to_dict
from gpt.data import BatchStream, TokenStream, eval_window_starts, split_files, to_inputs_targets
from gpt.errors import UserError
from gpt.evaluate import final_evaluation
from gpt.memory import check_model_fits
from gpt.model import build_model, num_params
from gpt.optim import build_optimizer, set_lr
from gpt.prepare import ensure_dataset
from gpt.tokenizer import Tokenizer, load_tokenizer
from gpt.tracking import Tracking, start_wandb

EXIT_PREEMPTED = 75  # training stopped by SIGTERM/SIGUSR1 after saving; resume with resume=auto


# ----------------------------------------------------------------------------------------------
# Pure helpers: derived sizes, learning rate, parameter groups


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Gradient accumulation steps so that micro_batch_size * world_size * steps == batch_size."""
    per_pass = micro_batch_size * world_size
    if batch_size % per_pass:
        raise UserError(
            f"train.batch_size ({batch_size}) is not a multiple of train.micro_batch_size ({micro_batch_size}) x "
            f"{world_size} processes = {per_pass}; choose a batch_size divisible by {per_pass} or another micro batch"
        )
    return batch_size // per_pass


def lr_at(step: int, t: TrainConfig, progress: float | None = None) -> float:
    """Linear warm-up to learning_rate, then cosine decay to min_lr at max_steps.

    With ``progress`` (the share of a time budget spent, see gpt.budget) the decay follows it instead
    of the step count, reaching min_lr when the budget is spent.
    """
    if step < t.warmup_steps:
        return t.learning_rate * (step + 1) / t.warmup_steps
    if progress is None:
        progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, progress)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.learning_rate - t.min_lr)


def cpu_threads(requested: int, local_processes: int) -> int:
    """Threads per process on CPU: as requested, else the physical cores this process may run on,
    shared out over the processes of this machine. accelerate launch sets OMP_NUM_THREADS=1 for a
    CPU run unless told otherwise, which would leave all but one core idle."""
    if requested > 0:
        return requested
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(usable, psutil.cpu_count(logical=False) or usable)
    return max(1, cores // max(1, local_processes))


# ----------------------------------------------------------------------------------------------
# W&B


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def new_run_id() -> str:
    """A W&B run id (8 lowercase letters and digits), kept in checkpoints so a resumed run continues it."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def wandb_mode(mode: str) -> str:
    """The W&B mode to run in: the config's, else WANDB_MODE, else online only with credentials."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """What the loop needs, set up once."""

    cfg: Config
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    model_cfg: ModelConfig
    train_data: TokenStream
    val_data: TokenStream
    accum: int
    start_step: int
    wandb_id: str | None
    wandb_mode: str
    resumed_metrics: dict[str, float]  # the evaluation stored in the checkpoint resumed from
    elapsed_s: float  # wall-clock seconds spent by earlier attempts of this run (from the checkpoint)


def print0(accelerator: Accelerator, *args: Any) -> None:
    if accelerator.is_main_process:
        print(*args, flush=True)


def open_data(cfg: Config, accelerator: Accelerator) -> tuple[Tokenizer, TokenStream, TokenStream]:
    with accelerator.local_main_process_first():  # one process per machine prepares a missing built-in set
        folder = ensure_dataset(cfg.data.root, cfg.data.dataset)
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    streams = []
    for split in ("train", "val"):
        stream = TokenStream(split_files(folder, split))
        if stream.identity != tokenizer.identity:
            raise UserError(
                f"{stream.files[0].path} was made by tokenizer {stream.identity!r} but {folder / 'tokenizer.json'} "
                f"is {tokenizer.identity!r}; re-run prepare for {folder}"
            )
        stream.check_fits(cfg.model.block_size)
        streams.append(stream)
    return tokenizer, streams[0], streams[1]


def resolve_resume(cfg: Config) -> Path | None:
    if cfg.resume == "false":
        existing = ckpt.complete_checkpoints(cfg.out_dir)
        if existing:
            raise UserError(
                f"{cfg.out_dir} already holds checkpoints (newest: {existing[-1].name}); pass resume=auto to "
                "continue that run, or choose another out_dir"
            )
        return None
    latest = ckpt.latest_checkpoint(cfg.out_dir)
    if latest is None and cfg.resume == "true":
        raise UserError(f"resume=true but {cfg.out_dir} has no complete checkpoint; use resume=auto to start fresh")
    return latest


def setup(cfg: Config) -> Run:
    t = cfg.train
    mode = wandb_mode(cfg.wandb.mode)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        # Several processes and no GPU: run them on CPU over gloo (accelerate's multi-process
        # launcher does not pass use_cpu from a config file on to the processes).
        cpu=launched > 1 and not torch.cuda.is_available(),
        mixed_precision=None if t.mixed_precision == "auto" else t.mixed_precision,  # None: the launch's
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        log_with="wandb" if mode != "disabled" else None,
        project_config=ProjectConfiguration(project_dir=cfg.out_dir, automatic_checkpoint_naming=False),
        dynamo_backend="inductor" if t.compile else "no",
        step_scheduler_with_optimizer=False,
        fsdp_plugin=fsdp.accelerate_plugin() if fsdp.fsdp_requested() else None,  # one unit per Block
    )
    if accelerator.num_processes != launched:
        raise UserError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}")
    accum = accumulation_steps(t.batch_size, t.micro_batch_size, accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accum  # derived: batch_size / (micro_batch_size * processes)
    device = accelerator.device
    if accelerator.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError(
            "mixed precision fp16 (from train.mixed_precision or the launch) needs a CUDA GPU; on CPU use bf16 or no"
        )
    fsdp.check_fsdp_runs(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP and t.optimizer == "muon":
        # Muon orthogonalises whole matrices; FSDP hands each process a shard of every matrix
        raise UserError("train.optimizer=muon does not work with FSDP (sharded matrices); use adamw or DDP")
    perf.set_matmul_precision(t.matmul_precision, device)  # 'auto': TF32 tensor cores on CUDA, full fp32 on CPU
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(t.cpu_threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))

    tokenizer, train_data, val_data = open_data(cfg, accelerator)
    if cfg.model.init_from:  # the architecture is the pretrained model's (gpt.hf)
        with accelerator.local_main_process_first():
            print0(accelerator, hf.adopt_architecture(cfg.model, tokenizer))
    model_cfg = ModelConfig(**to_dict(cfg.model))
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = tokenizer.vocab_size
    for data in (train_data, val_data):
        data.check_model(model_cfg.vocab_size)
    check_model_fits(model_cfg, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), fsdp.fsdp_requested())

    resume_from = resolve_resume(cfg)
    set_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(model_cfg)
    if cfg.model.init_from and resume_from is None:
        with accelerator.local_main_process_first():
            hf.load_pretrained(model, cfg.model.init_from)
    model = model.to(device)
    optimizer = build_optimizer(model, t, device)
    model, optimizer = accelerator.prepare(model, optimizer)
    register_weight_hooks(accelerator)

    resumed: dict[str, Any] = {}
    if resume_from is not None:
        resumed = restore(accelerator, resume_from, model_cfg, tokenizer)
        if changes := resume_changes(resumed["config"], cfg):  # e.g. a new learning rate: said, not silent
            print0(accelerator, changes)
    else:
        set_seed(cfg.seed, device_specific=True)  # dropout differs between processes
    return Run(
        cfg,
        accelerator,
        model,
        optimizer,
        tokenizer,
        model_cfg,
        train_data,
        val_data,
        accum,
        start_step=int(resumed.get("step", 0)),
        wandb_id=resumed.get("wandb_id"),
        wandb_mode=mode,
        resumed_metrics=resumed.get("metrics", {}),
        elapsed_s=float(resumed.get("elapsed_s", 0.0)),
    )


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


def restore(accelerator: Accelerator, folder: Path, model_cfg: ModelConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """Load a checkpoint into the prepared model and optimizer; returns its trainer state."""
    ckpt.verify(folder)
    state = ckpt.read_trainer_state(folder)
    ckpt.check_same_model(state["config"]["model"] | {"vocab_size": state["vocab_size"]}, model_cfg, folder)
    if state["tokenizer"] != tokenizer.identity:
        raise UserError(
            f"cannot resume from {folder}: it was trained with tokenizer {state['tokenizer']!r} but the data uses "
            f"{tokenizer.identity!r}; use the same data.dataset as the checkpoint"
        )
    fsdp.check_checkpoint_fits(folder, fsdp_run=accelerator.distributed_type == DistributedType.FSDP)
    accelerator.load_state(str(folder))
    # load_state restores accelerate's micro-step counter, counted in the saved run's accumulation
    # steps; checkpoints fall on optimizer-step boundaries, so it restarts at zero (elastic resume).
    accelerator.step = 0
    print0(accelerator, f"resumed from {folder} at step {state['step']}")
    return state


def init_tracking(run: Run) -> str | None:
    """Start (or continue) the W&B run on the main process; returns its id."""
    cfg, accelerator = run.cfg, run.accelerator
    if run.wandb_mode == "disabled":
        return None
    wandb_id = run.wandb_id or new_run_id()
    init = {
        "id": wandb_id,
        "resume": "allow",
        "mode": run.wandb_mode,
        "dir": str(Path(cfg.out_dir).resolve()),
        "name": cfg.wandb.name or os.environ.get("WANDB_NAME") or Path(cfg.out_dir).name,
    }
    for key in ("entity", "group", "notes"):
        if getattr(cfg.wandb, key):
            init[key] = getattr(cfg.wandb, key)
    if cfg.wandb.tags:
        init["tags"] = cfg.wandb.tags
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    derived = {
        "world_size": accelerator.num_processes,
        "accumulation_steps": run.accum,
        "mixed_precision": accelerator.mixed_precision,  # in effect: train.mixed_precision=auto takes the launch's
        "tokens_per_step": cfg.train.batch_size * cfg.model.block_size,
        "n_params": num_params(accelerator.unwrap_model(run.model)),
        "vocab_size": run.model_cfg.vocab_size,
    }
    project = cfg.wandb.project or os.environ.get("WANDB_PROJECT") or "gpt"
    start_wandb(accelerator, project, to_dict(cfg) | {"derived": derived}, init, cfg.wandb.init_timeout_s)
    return wandb_id


# ----------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Mean loss over a fixed set of windows per split, shared out over all processes and reduced.

    Every process runs the same number of forward passes (sharded models need all of them), padding
    its share with ignored windows; the result does not depend on the number of processes.
    """
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    T, n, micro = cfg.model.block_size, cfg.train.eval_windows, cfg.train.micro_batch_size
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(n / world)
    model.eval()
    out = {}
    for split_id, (name, data) in enumerate((("train", run.train_data), ("val", run.val_data))):
        starts = eval_window_starts(cfg.seed, split_id, n, len(data), T)
        mine = starts[rank::world]
        totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # loss sum, token count
        for lo in range(0, per_rank, micro):
            rows = min(micro, per_rank - lo)
            chunk = mine[lo : lo + rows]
            real = len(chunk)
            if real < rows:  # padding: any window, ignored below
                chunk = list(chunk) + [starts[0]] * (rows - real)
            x, y = to_inputs_targets(data.windows(chunk, T + 1))
            y[real:] = -1
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            logits, _ = model(x)
            loss_sum = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum")
            totals += torch.stack([loss_sum.double(), (y != -1).sum().double()])
        totals = accelerator.reduce(totals, reduction="sum")
        out[f"{name}/loss"] = (totals[0] / totals[1]).item()
    model.train()
    return out


# ----------------------------------------------------------------------------------------------
# Saving


def save(run: Run, step: int, wandb_id: str | None, metrics: dict[str, float], elapsed_s: float = 0.0) -> Path:
    cfg, accelerator = run.cfg, run.accelerator
    tmp = ckpt.checkpoints_dir(cfg.out_dir) / f".tmp-{ckpt.step_dir_name(step)}"
    if accelerator.is_main_process:
        ckpt.begin_save(cfg.out_dir, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.distributed_type == DistributedType.FSDP:  # sharded on disk: gather a full copy to export
        full = accelerator.get_state_dict(run.model)
        if accelerator.is_main_process:
            ckpt.save_weights(full, tmp / ckpt.WEIGHTS)
    accelerator.wait_for_everyone()  # every process has written its files (RNG state, shards) before the rename
    final = ckpt.checkpoints_dir(cfg.out_dir) / ckpt.step_dir_name(step)
    if accelerator.is_main_process:
        meta = {"step": step, "tokens_seen": step * cfg.train.batch_size * cfg.model.block_size, **metrics}
        ckpt.write_export(tmp / ckpt.EXPORT_DIR, tmp / ckpt.WEIGHTS, run.model_cfg, run.tokenizer, meta)
        state = {
            "step": step,
            "config": to_dict(cfg),
            "vocab_size": run.model_cfg.vocab_size,
            "tokenizer": run.tokenizer.identity,
            "world_size": accelerator.num_processes,
            "wandb_id": wandb_id,
            "metrics": metrics,
            # the data position: step s of the sample stream is a function of (seed, s) alone
            "sample_stream": {"seed": cfg.seed, "next_step": step, "batch_size": cfg.train.batch_size},
            "elapsed_s": elapsed_s,  # wall clock spent so far, for train.time_budget_s
        }
        final = ckpt.finish_save(tmp, cfg.out_dir, step, state, cfg.train.keep_last, cfg.train.keep_best)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]  # the last logged value of each metric
    model: torch.nn.Module  # this process's trained model, unwrapped
    is_main_process: bool


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (what schedulers send before preempting or at a time limit)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class MetricsLog:
    """metrics.jsonl in the run directory (main process), one JSON object per logging event."""

    def __init__(self, out_dir: str, enabled: bool):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train_step(run: Run, batches: BatchStream, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at learning rate ``lr`` over the next global batch (run.accum micro-batches).

    Returns the sum of the micro-batch losses and the gradient norm before clipping as tensors:
    reading them waits for the device, so the loop does it only at log steps.
    """
    accelerator, model, optimizer, t = run.accelerator, run.model, run.optimizer, run.cfg.train
    device = accelerator.device
    set_lr(optimizer, lr)
    step_loss = torch.zeros((), device=device)
    for x, y in batches.next_step():
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with accelerator.accumulate(model):
            _, loss = model(x, y)
            accelerator.backward(loss)
            step_loss += loss.detach()
            if accelerator.sync_gradients:
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def batch_stream(run: Run, start_step: int) -> BatchStream:
    """This process's micro-batches from ``start_step`` on, made ahead on a background thread."""
    cfg, accelerator = run.cfg, run.accelerator
    return BatchStream(
        run.train_data, seed=cfg.seed, block_size=cfg.model.block_size, batch_size=cfg.train.batch_size,
        micro_batch_size=cfg.train.micro_batch_size, rank=accelerator.process_index, world=accelerator.num_processes,
        start_step=start_step, pin_memory=accelerator.device.type == "cuda",
    )  # fmt: skip


def train(cfg: Config) -> TrainResult:
    """Train as the config says; returns the final metrics. Exits with EXIT_PREEMPTED on a stop signal."""
    run = setup(cfg)
    accelerator, model, t = run.accelerator, run.model, cfg.train
    device = accelerator.device
    tokens_per_step = t.batch_size * cfg.model.block_size
    model_flops = perf.flops_per_token(run.model_cfg)
    peak = t.peak_tflops or perf.peak_tflops(device)  # None on CPU unless given: no MFU
    print0(
        accelerator,
        f"{accelerator.num_processes} process(es) on {device.type}, mixed precision {accelerator.mixed_precision}"
        f"{f', {torch.get_num_threads()} CPU thread(s) each' if device.type == 'cpu' else ''}: "
        f"global batch {t.batch_size} = micro batch {t.micro_batch_size} x {accelerator.num_processes} processes "
        f"x {run.accum} accumulation steps ({tokens_per_step:,} tokens/step); "
        f"{num_params(accelerator.unwrap_model(model)):,} parameters",
    )
    if run.start_step >= t.max_steps:
        print0(accelerator, f"{cfg.out_dir} is already trained to step {run.start_step} (train.max_steps is "
                            f"{t.max_steps}); raise train.max_steps to train further")  # fmt: skip
        accelerator.end_training()
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        return TrainResult(run.start_step, run.resumed_metrics, unwrapped, accelerator.is_main_process)
    if accelerator.is_main_process:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    wandb_id = init_tracking(run)
    tracking = Tracking(accelerator, cfg, model, run.tokenizer)  # memory, samples, loss.png, W&B extras
    metrics_log = MetricsLog(cfg.out_dir, accelerator.is_main_process)

    step = run.start_step
    batches = batch_stream(run, step)
    budget = TimeBudget(accelerator, t.time_budget_s, run.elapsed_s)
    stop = StopFlag()
    progress = make_progress(accelerator, step, t.max_steps)
    last: dict[str, Any] = {}
    timer_start, timer_steps = time.perf_counter(), 0
    model.train()
    try:
        while step < t.max_steps and not budget.spent:
            lr = lr_at(step, t, budget.fraction)
            step_loss, grad_norm = train_step(run, batches, lr)
            step += 1
            timer_steps += 1
            progress.update(1)
            budget.tick(step)

            boundary = step == t.max_steps or budget.spent
            evaluating = step % t.eval_interval == 0 or boundary
            record: dict[str, Any] = {}
            if step % t.log_interval == 0 or boundary:
                # The exact mean over every micro-batch of every process (each has the same token count).
                loss_mean = accelerator.reduce(step_loss / run.accum, reduction="mean").item()
                elapsed = time.perf_counter() - timer_start
                record |= {
                    "train/loss": loss_mean, "lr": lr, "grad_norm": float(grad_norm),
                    "tokens_per_s": timer_steps * tokens_per_step / elapsed, "step_ms": 1000 * elapsed / timer_steps,
                }  # fmt: skip
                if peak is not None:  # model FLOPs utilisation, against the peak of every device in the job
                    record["mfu"] = perf.mfu(model_flops, record["tokens_per_s"], accelerator.num_processes, peak)
                record |= tracking.memory()
                if not math.isfinite(loss_mean):
                    raise UserError(
                        f"the loss became {loss_mean} at step {step}; lower train.learning_rate "
                        "or use bf16 instead of fp16"
                    )
            if evaluating:
                record |= {f"eval/{k}": v for k, v in evaluate(run).items()}
            stopping = stop_requested(accelerator, stop, check=bool(record) or step % t.checkpoint_interval == 0)
            if record:
                record |= {"step": step, "tokens": step * tokens_per_step}
                last |= record
                log(accelerator, progress, metrics_log, record)
            if evaluating:
                tracking.after_eval(step)
            saving = step % t.checkpoint_interval == 0 or boundary or stopping
            if saving:  # with this step's evaluation, if there was one (keep_best compares those)
                evals = {k: v for k, v in record.items() if k.startswith("eval/")}
                path = save(run, step, wandb_id, evals, budget.elapsed())
                print0(accelerator, f"saved {path}")
            if record or saving:  # throughput is measured over training steps only
                timer_start, timer_steps = time.perf_counter(), 0
            if stopping:
                print0(accelerator, f"stopped by signal {stop.signal} at step {step}; resume with resume=auto")
                accelerator.end_training()
                sys.exit(EXIT_PREEMPTED)
    finally:
        batches.close()
        progress.close()
        stop.restore()
    if t.final_eval:  # the full pass over val (gpt.evaluate): logged as final/val/*, written to out_dir/eval.json
        final = final_evaluation(
            accelerator, model, run.val_data, run.tokenizer, cfg.model.block_size, t.micro_batch_size, cfg.out_dir, step
        )
        metrics_log.write(final | {"step": step, "tokens": step * tokens_per_step})
        last |= final
    tracking.finish(step, last)  # the last value of every metric, the final evaluation included, in the W&B summary
    accelerator.end_training()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    return TrainResult(step, last, unwrapped, accelerator.is_main_process)


def stop_requested(accelerator: Accelerator, stop: StopFlag, check: bool) -> bool:
    """Whether any process got a stop signal. Processes agree through a collective, so it is only
    asked at logging, evaluation and checkpoint steps (always, with a single process)."""
    if accelerator.num_processes == 1:
        return stop.signal is not None
    if not check:
        return False
    flag = torch.tensor([1.0 if stop.signal is not None else 0.0], device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() > 0


def make_progress(accelerator: Accelerator, start: int, total: int):
    from tqdm.auto import tqdm

    enabled = accelerator.is_main_process and sys.stdout.isatty()
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def log(accelerator: Accelerator, progress, metrics_log: MetricsLog, record: dict[str, Any]) -> None:
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    metrics_log.write(record)
    if not accelerator.is_main_process:
        return
    parts = [f"step {record['step']}"]
    for key, fmt in (
        ("train/loss", "loss {:.4f}"),
        ("eval/train/loss", "eval train {:.4f}"),
        ("eval/val/loss", "val {:.4f}"),
        ("lr", "lr {:.2e}"),
        ("grad_norm", "grad norm {:.2f}"),
        ("step_ms", "{:.1f} ms/step"),
        ("tokens_per_s", "{:,.0f} tok/s"),
        ("mfu", "MFU {:.1%}"),
    ):
        if key in record:
            parts.append(fmt.format(record[key]))
    line = " | ".join(parts)
    if progress.disable:
        print(line, flush=True)
    else:
        progress.write(line)
