"""The training loop, built on ``accelerate.Accelerator``.

Everything about devices, processes and precision goes through the Accelerator: ``prepare``,
``accumulate``, ``backward``, ``clip_grad_norm_``, ``reduce``, ``save_state``/``load_state`` and the
W&B tracker. What the loop owns itself is the data (a pure function of seed and step, see
``gpt.data``), the learning-rate schedule (a pure function of the step) and the checkpoint layout
(``gpt.checkpoint``); so a resumed run, or one split differently over processes, sees the same
batches and learning rates at every step.
"""

from __future__ import annotations

import math
import os
import secrets
import string
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    ProjectConfiguration,
    set_seed,
)

from gpt import activation_checkpointing, collective, cpu, fsdp, guards, hf, perf, precision, resume, runfiles, signals
from gpt import checkpoint as ckpt
from gpt.budget import TimeBudget
from gpt.config import Config, ModelConfig, TrainConfig, resume_changes, to_dict
from gpt.data import BatchStream, DocumentStarts, TokenStream, eval_window_starts, split_files, to_inputs_targets
from gpt.errors import UserError
from gpt.evaluation import final_evaluation, final_evaluation_done
from gpt.hellaswag import InLoopTasks
from gpt.memory import check_model_fits
from gpt.mixture import Mixture, Source, describe_data, parse_mixture
from gpt.model import build_model, num_params
from gpt.optim import build_optimizer, set_lr
from gpt.plan import accumulation_steps, resolve_micro_batch
from gpt.plot import record_at_step
from gpt.prepare import ensure_dataset
from gpt.schedule import lr_at
from gpt.spike import SpikeGuard
from gpt.tokenizer import Tokenizer, load_tokenizer
from gpt.tracking import Tracking, start_wandb

# ----------------------------------------------------------------------------------------------
# Pure helpers: derived sizes, learning rate, parameter groups


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
    micro_batch_size: int  # train.micro_batch_size resolved ('auto' chosen by gpt.plan); what every pass uses
    start_step: int
    wandb_id: str | None
    wandb_mode: str
    resumed_metrics: dict[str, float]  # the evaluation stored in the checkpoint resumed from
    elapsed_s: float  # wall-clock seconds spent by earlier attempts of this run (from the checkpoint)
    guard: SpikeGuard | None  # train.spike_*: skips updates whose loss or gradient norm spikes
    mixture: Mixture  # the datasets rows are drawn from (one without data.mixture), document starts included
    watch: guards.FiniteWatch  # non-finite steps, checked before every save
    lock: runfiles.RunLock  # the out_dir, held by the main process while it trains


def print0(accelerator: Accelerator, *args: Any) -> None:
    if accelerator.is_main_process:
        print(*args, flush=True)


def open_dataset(cfg: Config, accelerator: Accelerator, name: str) -> tuple[Tokenizer, TokenStream, TokenStream]:
    """The tokenizer and the train and val streams of dataset ``name`` under data.root."""
    # A missing built-in dataset is prepared by the main process first (data.root on a filesystem the
    # machines share is then ready for all), then by each machine's first process (node-local disks).
    with accelerator.main_process_first(), accelerator.local_main_process_first():
        folder = ensure_dataset(cfg.data.root, name)
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


def open_data(cfg: Config, accelerator: Accelerator) -> tuple[Tokenizer, list[Source]]:
    """data.dataset, or every dataset of data.mixture (which must share one tokenizer)."""
    weighted = parse_mixture(cfg.data.mixture) if cfg.data.mixture else [(cfg.data.dataset, 1.0)]
    sources, tokenizers = [], []
    for name, weight in weighted:
        tokenizer, train, val = open_dataset(cfg, accelerator, name)
        if tokenizers and tokenizer.identity != tokenizers[0].identity:
            raise UserError(
                f"data.mixture mixes tokenizers: {sources[0].name} was made by {tokenizers[0].identity!r} and {name} "
                f"by {tokenizer.identity!r}; prepare every dataset of a mixture with one tokenizer"
            )
        documents = (
            DocumentStarts(train, tokenizer.eot_id, cfg.model.block_size) if cfg.data.align == "document" else None
        )
        sources.append(Source(name, weight, train, val, documents))
        tokenizers.append(tokenizer)
    return tokenizers[0], sources


def setup(cfg: Config) -> Run:
    t = cfg.train
    mode = wandb_mode(cfg.wandb.mode)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    precision, precision_note = cpu.training_precision(t.mixed_precision, t.cpu_bf16, on_cpu, cfg.model.n_embd)
    accelerator = Accelerator(
        # Several processes and no GPU: run them on CPU over gloo (accelerate's multi-process
        # launcher does not pass use_cpu from a config file on to the processes).
        cpu=launched > 1 and not torch.cuda.is_available(),
        mixed_precision=precision,  # None: the launch's
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
        log_with="wandb" if mode != "disabled" else None,
        project_config=ProjectConfiguration(project_dir=cfg.out_dir, automatic_checkpoint_naming=False),
        dynamo_backend="inductor" if t.compile else "no",
        step_scheduler_with_optimizer=False,
        fsdp_plugin=fsdp.accelerate_plugin(t.activation_checkpointing) if fsdp.fsdp_requested() else None,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=t.collective_timeout_s))],
    )
    if precision_note:
        print0(accelerator, precision_note)
    if accelerator.num_processes != launched:
        raise UserError(f"launched as {launched} processes but accelerate set up {accelerator.num_processes}")
    device = accelerator.device
    if accelerator.mixed_precision == "fp16" and device.type != "cuda":
        raise UserError(
            "mixed precision fp16 (from train.mixed_precision or the launch) needs a CUDA GPU; on CPU use bf16 or no"
        )
    fsdp.check_fsdp_runs(accelerator)
    fsdp.set_mixed_precision(accelerator)  # FSDP: bf16/fp16 compute, fp32 gradient reduction
    lock = runfiles.lock_run_dir(cfg.out_dir, enabled=accelerator.is_main_process)  # one training per out_dir
    if accelerator.distributed_type == DistributedType.FSDP and t.optimizer == "muon":
        # Muon orthogonalises whole matrices; FSDP hands each process a shard of every matrix
        raise UserError("train.optimizer=muon does not work with FSDP (sharded matrices); use adamw or DDP")
    perf.set_matmul_precision(t.matmul_precision, device)  # 'auto': TF32 tensor cores on CUDA, full fp32 on CPU
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(t.cpu_threads, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))

    tokenizer, sources = open_data(cfg, accelerator)
    train_data, val_data = sources[0].train, sources[0].val
    if cfg.model.init_from:  # the architecture is the pretrained model's (gpt.hf)
        with accelerator.local_main_process_first():
            print0(accelerator, hf.adopt_architecture(cfg.model, tokenizer))
    model_cfg = ModelConfig(**to_dict(cfg.model))
    if model_cfg.vocab_size == 0:
        model_cfg.vocab_size = tokenizer.vocab_size
    for data in (stream for source in sources for stream in (source.train, source.val)):
        data.check_model(model_cfg.vocab_size)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    micro, why = resolve_micro_batch(t, model_cfg, accelerator.num_processes, perf.device_memory_bytes(device),
                                     accelerator.mixed_precision, sharded)  # fmt: skip
    print0(accelerator, f"micro batch {why}")
    accum = accumulation_steps(t.batch_size, micro, accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accum  # derived: batch_size / (micro_batch_size * processes)
    check_model_fits(model_cfg, device, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), fsdp.fsdp_requested())

    resume_from = resume.resume_point(cfg.out_dir, cfg.resume, accelerator)
    set_seed(cfg.seed)  # identical initial weights on every process
    model = build_model(model_cfg)
    if cfg.model.init_from and resume_from is None:
        with accelerator.local_main_process_first():
            hf.load_pretrained(model, cfg.model.init_from)
    model = model.to(device)
    if head_note := cpu.head_precision(model, accelerator, t.cpu_bf16):  # bf16 on CPU: the LM head too?
        print0(accelerator, head_note)
    optimizer = build_optimizer(model, t, device)
    activation_checkpointing.apply(accelerator, model, t.activation_checkpointing, model_cfg.dropout)
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
        micro,
        start_step=int(resumed.get("step", 0)),
        wandb_id=resumed.get("wandb_id"),
        wandb_mode=mode,
        resumed_metrics=resumed.get("metrics", {}),
        elapsed_s=float(resumed.get("elapsed_s", 0.0)),
        guard=spike_guard(t, accelerator, resumed.get("spike_guard")),
        mixture=Mixture(sources, cfg.seed, cfg.model.block_size),
        watch=guards.FiniteWatch(device, fp16=accelerator.mixed_precision == "fp16"),
        lock=lock,
    )


def spike_guard(t: TrainConfig, accelerator: Accelerator, state: dict | None) -> SpikeGuard | None:
    """The spike guard the config asks for (None when off), continuing a checkpoint's window and count."""
    guard = SpikeGuard(t.spike_loss_ratio, t.spike_grad_ratio, t.spike_window, state)
    if not guard.enabled:
        return None
    if accelerator.mixed_precision == "fp16":  # a skipped step would leave the gradient scaler mid-step
        raise UserError("the spike guard (train.spike_*) does not work with fp16; use bf16, or turn the guard off")
    return guard


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
    """Load a checkpoint (verified by ``resume.resume_point``) into the prepared model and optimizer;
    returns its trainer state."""
    state = ckpt.read_trainer_state(folder)
    ckpt.check_same_model(state["config"]["model"] | {"vocab_size": state["vocab_size"]}, model_cfg, folder)
    if state["tokenizer"] != tokenizer.identity:
        raise UserError(
            f"cannot resume from {folder}: it was trained with tokenizer {state['tokenizer']!r} but the data uses "
            f"{tokenizer.identity!r}; use the same data.dataset as the checkpoint"
        )
    fsdp.check_checkpoint_fits(folder, fsdp_run=accelerator.distributed_type == DistributedType.FSDP)
    if warning := resume.check_rng_state(folder, accelerator.process_index):
        print(warning, file=sys.stderr, flush=True)
    ckpt.fault_point("resume.load")
    with precision.scaler_state_optional(accelerator, folder):  # fp16 resuming a bf16/fp32 run: fresh scaler
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
        "micro_batch_size": run.micro_batch_size,
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
    its share with ignored windows; the result does not depend on the number of processes. Every
    pass has the same batch shape, so a compiled model compiles evaluation once.
    """
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    T, n = cfg.model.block_size, cfg.train.eval_windows
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(n / world)
    rows = min(run.micro_batch_size, per_rank)  # windows per pass, the last pass padded up to it
    model.eval()
    out = {}
    for split_id, (name, data) in enumerate(run.mixture.eval_splits()):
        starts = eval_window_starts(cfg.seed, split_id, n, len(data), T)
        mine = starts[rank::world]
        totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)  # loss sum, token count
        for lo in range(0, per_rank, rows):
            chunk = mine[lo : lo + rows]
            real = len(chunk)
            chunk = list(chunk) + [starts[0]] * (rows - real)  # padding: any window, ignored below
            x, y = to_inputs_targets(data.windows(chunk, T + 1))
            y[real:] = -1
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            _, loss_sum = model(x, y, reduction="sum")
            totals += torch.stack([loss_sum.double(), (y != -1).sum().double()])
        totals = accelerator.reduce(totals, reduction="sum")
        out[f"{name}/loss"] = (totals[0] / totals[1]).item()
    model.train()
    return run.mixture.with_weighted_means(out)


# ----------------------------------------------------------------------------------------------
# Saving


def save(run: Run, step: int, wandb_id: str | None, metrics: dict[str, float], elapsed_s: float = 0.0) -> Path:
    """Save a checkpoint of ``step``, never of a diverged state; a full disk is one line (see gpt.guards)."""
    cfg, accelerator = run.cfg, run.accelerator
    run.watch.check(accelerator, run.model, step, cfg.out_dir, cfg.train.learning_rate)
    tmp = ckpt.tmp_dir(cfg.out_dir, step)
    try:
        return _write_checkpoint(run, tmp, step, wandb_id, metrics, elapsed_s)
    except Exception as e:
        failure = guards.disk_full_error(
            e, cfg.out_dir, f"checkpoint {tmp}", tmp if accelerator.is_main_process else None
        )
        if failure is None:
            raise
        raise failure from None


def _write_checkpoint(run: Run, tmp: Path, step: int, wandb_id: str | None, metrics: dict, elapsed_s: float) -> Path:
    cfg, accelerator = run.cfg, run.accelerator
    if accelerator.is_main_process:
        ckpt.begin_save(cfg.out_dir, step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.distributed_type == DistributedType.FSDP:  # sharded on disk: gather a full copy to export
        full = accelerator.get_state_dict(run.model)
        if accelerator.is_main_process:
            ckpt.save_weights(full, tmp / ckpt.WEIGHTS)
    ckpt.fault_point("save.state", step)
    accelerator.wait_for_everyone()  # every process has written its files (RNG state, shards) before the rename
    final = ckpt.checkpoints_dir(cfg.out_dir) / ckpt.step_dir_name(step)
    if accelerator.is_main_process:
        meta = {"step": step, "tokens_seen": step * cfg.train.batch_size * cfg.model.block_size, **metrics}
        ckpt.write_export(tmp / ckpt.EXPORT_DIR, tmp / ckpt.WEIGHTS, run.model_cfg, run.tokenizer, meta)
        ckpt.fault_point("save.export", step)
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
            "spike_guard": run.guard.state() if run.guard else None,  # its window and skipped count
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


def train_step(
    run: Run, batches: BatchStream, lr: float, guard: SpikeGuard | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at learning rate ``lr`` over the next global batch (run.accum micro-batches).

    Returns the sum of the micro-batch losses and the gradient norm before clipping as tensors:
    reading them waits for the device, so the loop does it only at log steps. With a spike guard
    (gpt.spike) they are read at every step, and a spike's update is dropped instead of applied.
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
            apply = True
            if accelerator.sync_gradients:
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                if guard is not None:
                    apply = not spike_skipped(run, guard, step_loss, grad_norm)
            if apply:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm


def spike_skipped(run: Run, guard: SpikeGuard, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether the guard drops this step's update; every process reads the same reduced values."""
    accelerator = run.accelerator
    loss = accelerator.reduce(step_loss / run.accum, reduction="mean").item()
    reason = guard.spike(loss, float(grad_norm))
    if reason:
        print0(accelerator, f"skipped an update (spike guard): {reason}")
    return reason is not None


def batch_stream(run: Run, start_step: int) -> BatchStream:
    """This process's micro-batches from ``start_step`` on, made ahead on a background thread."""
    cfg, accelerator = run.cfg, run.accelerator
    return BatchStream(
        run.train_data, seed=cfg.seed, block_size=cfg.model.block_size, batch_size=cfg.train.batch_size,
        micro_batch_size=run.micro_batch_size, rank=accelerator.process_index, world=accelerator.num_processes,
        start_step=start_step, pin_memory=accelerator.device.type == "cuda", mixture=run.mixture,
    )  # fmt: skip


def train(cfg: Config) -> TrainResult:
    """Train as the config says; returns the final metrics. Exits with signals.EXIT_PREEMPTED on a
    stop signal, after saving a checkpoint if it came during the training loop (gpt.signals)."""
    with signals.stop_signals() as stop:
        try:
            return train_until_stopped(cfg, stop)
        except RuntimeError as e:
            if not collective.is_timeout(e):
                raise
            collective.exit_on_timeout(cfg.train.collective_timeout_s)  # names the processes that did not answer


def train_until_stopped(cfg: Config, stop: signals.StopRequest) -> TrainResult:
    run = setup(cfg)
    accelerator, model, t = run.accelerator, run.model, cfg.train
    device = accelerator.device
    tokens_per_step = t.batch_size * cfg.model.block_size
    model_flops = perf.flops_per_token(run.model_cfg)
    peak = perf.training_peak(t.peak_tflops, device, accelerator.mixed_precision)  # None on CPU unless given
    print0(
        accelerator,
        f"{accelerator.num_processes} process(es) on {device.type}, mixed precision {accelerator.mixed_precision}"
        f"{f', {torch.get_num_threads()} CPU thread(s) each' if device.type == 'cpu' else ''}: "
        f"global batch {t.batch_size} = micro batch {run.micro_batch_size} x {accelerator.num_processes} processes "
        f"x {run.accum} accumulation steps ({tokens_per_step:,} tokens/step); "
        f"{num_params(accelerator.unwrap_model(model)):,} parameters; "
        f"MFU {f'against the {peak.label}, {peak.tflops:g} TFLOP/s' if peak else 'not reported (no peak known)'}",
    )
    print0(accelerator, describe_data(run.mixture))
    if run.start_step >= t.max_steps and (not t.final_eval or final_evaluation_done(cfg.out_dir, run.start_step)):
        print0(accelerator, f"{cfg.out_dir} is already trained to step {run.start_step} (train.max_steps is "
                            f"{t.max_steps}); raise train.max_steps to train further")  # fmt: skip
        accelerator.end_training()
        run.lock.release()
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        done = run.resumed_metrics | record_at_step(cfg.out_dir, run.start_step)  # with the final evaluation
        return TrainResult(run.start_step, done, unwrapped, accelerator.is_main_process)
    if accelerator.is_main_process:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    wandb_id = init_tracking(run)
    tracking = Tracking(accelerator, cfg, model, run.tokenizer)  # memory, samples, loss.png, W&B extras
    metrics_log = runfiles.MetricsLog(cfg.out_dir, accelerator.is_main_process, run.start_step)
    tasks = InLoopTasks(t.eval_tasks, t.eval_task_limit, run.tokenizer) if t.eval_tasks else None  # read once

    step = run.start_step
    batches = batch_stream(run, step)
    rows_seen = run.mixture.rows_seen(range(step), t.batch_size)  # per dataset, for tokens/<name>
    budget = TimeBudget(accelerator, t.time_budget_s, run.elapsed_s)
    progress = make_progress(accelerator, step, t.max_steps)
    last: dict[str, Any] = {}
    timer_start, timer_steps = time.perf_counter(), 0
    model.train()
    stop.deferring = True  # in the loop a stop signal only sets a flag, acted on after the step
    try:
        while step < t.max_steps and not budget.spent:
            lr = lr_at(step, t, budget.fraction)
            spikes_before = run.guard.skipped if run.guard is not None else 0
            step_loss, grad_norm = train_step(run, batches, lr, run.guard)
            spiked = run.guard is not None and run.guard.skipped > spikes_before  # not applied: nothing diverged
            rows_seen += run.mixture.rows_seen(range(step, step + 1), t.batch_size)
            step += 1
            if not spiked:
                run.watch.after_step(step_loss, grad_norm, accelerator.optimizer_step_was_skipped)
            ckpt.fault_point("train.step", step)
            timer_steps += 1
            progress.update(1)
            budget.tick(step)

            boundary = step == t.max_steps or budget.spent
            evaluating = step % t.eval_interval == 0 or boundary
            record: dict[str, Any] = {}
            if step % t.log_interval == 0 or boundary or step == 1:  # step 1: a first line at once
                # The exact mean over every micro-batch of every process (each has the same token count).
                loss_mean = accelerator.reduce(step_loss / run.accum, reduction="mean").item()
                elapsed = time.perf_counter() - timer_start
                record |= {
                    "train/loss": loss_mean, "lr": lr, "grad_norm": float(grad_norm),
                    "tokens_per_s": timer_steps * tokens_per_step / elapsed, "step_ms": 1000 * elapsed / timer_steps,
                }  # fmt: skip
                if peak is not None:  # model FLOPs utilisation, against the peak of every device in the job
                    record["mfu"] = perf.mfu(model_flops, record["tokens_per_s"], accelerator.num_processes,
                                             peak.tflops)  # fmt: skip
                record |= tracking.memory()
                if run.watch.fp16:
                    record["skipped_steps"] = run.watch.skipped_steps  # by the fp16 scaler, so far
                if run.guard is not None:
                    record["spike_skipped_steps"] = run.guard.skipped  # by the spike guard, so far
                record |= run.mixture.tokens_seen(rows_seen)
                if not math.isfinite(loss_mean) and not spiked:
                    raise guards.diverged(cfg.out_dir, run.watch.checked_step, step, t.learning_rate)
            if evaluating:
                record |= {f"eval/{k}": v for k, v in evaluate(run).items()}
                if tasks is not None:  # four endings an item: items per pass ~ sequences of a micro batch
                    items_per_pass = max(1, run.micro_batch_size // 4)
                    record |= tasks.evaluate(model, cfg.model.block_size, run.model_cfg.vocab_size, items_per_pass,
                                             accelerator)  # fmt: skip
            stopping = stop.agreed(accelerator, check=bool(record) or step % t.checkpoint_interval == 0)
            if record:
                record |= {"step": step, "tokens": step * tokens_per_step}
                last |= record
                log(accelerator, progress, metrics_log, record, next_line_note(step, record, t))
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
                print0(accelerator, f"stopped by {stopping} at step {step}; resume with resume=auto")
                accelerator.end_training()
                sys.exit(signals.EXIT_PREEMPTED)
    except BaseException:
        run.lock.release()  # a stop signal, a divergence, a full disk: the out_dir is free again
        raise
    finally:
        batches.close()
        progress.close()
        stop.deferring = False
    stop.exit_if_requested()  # came after the last check: the checkpoint is saved, the final evaluation runs on restart
    if t.final_eval:  # the full pass over val (gpt.evaluate): logged as final/val/*, written to out_dir/eval.json
        final = {}
        for label, data in run.mixture.final_splits():
            final |= final_evaluation(accelerator, model, data, run.tokenizer, cfg.model.block_size,
                                      run.micro_batch_size, cfg.out_dir, step, label)  # fmt: skip
        final = run.mixture.with_weighted_means(final)
        metrics_log.write(final | {"step": step, "tokens": step * tokens_per_step})
        last |= final
    tracking.finish(step, last)  # the last value of every metric, the final evaluation included, in the W&B summary
    accelerator.end_training()
    run.lock.release()
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    return TrainResult(step, last, unwrapped, accelerator.is_main_process)


def make_progress(accelerator: Accelerator, start: int, total: int):
    from tqdm.auto import tqdm

    enabled = accelerator.is_main_process and sys.stdout.isatty()
    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def next_line_note(step: int, record: dict[str, Any], t: TrainConfig) -> str:
    """After step 1, when the next log line is more than a few seconds away: when it will come."""
    if step != 1 or "step_ms" not in record:
        return ""
    next_step = min(t.log_interval, t.max_steps)
    wait_s = record["step_ms"] / 1000 * (next_step - step)
    return f"next line at step {next_step}, in about {wait_s:.0f} s" if wait_s >= 10 else ""


def log(
    accelerator: Accelerator, progress, metrics_log: runfiles.MetricsLog, record: dict[str, Any], note: str = ""
) -> None:
    accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    metrics_log.write(record)
    if not accelerator.is_main_process:
        return
    parts = [f"step {record['step']}"]
    for key, fmt in (
        ("train/loss", "loss {:.4f}"),
        ("eval/train/loss", "eval train {:.4f}"),
        ("eval/val/loss", "val {:.4f}"),
        ("eval/hellaswag/acc_norm", "hellaswag {:.1%}"),
        ("lr", "lr {:.2e}"),
        ("grad_norm", "grad norm {:.2f}"),
        ("skipped_steps", "{} skipped by the scaler"),
        ("spike_skipped_steps", "{} spikes skipped"),
        ("step_ms", "{:.1f} ms/step"),
        ("tokens_per_s", "{:,.0f} tok/s"),
        ("mfu", "MFU {:.1%}"),
    ):
        if key in record:
            parts.append(fmt.format(record[key]))
    line = " | ".join(parts + ([note] if note else []))
    if progress.disable:
        print(line, flush=True)
    else:
        progress.write(line)
