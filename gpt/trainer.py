"""The training loop, built on ``accelerate.Accelerator``: the set-up and the loop.

Everything about devices, processes and precision goes through the Accelerator. What the loop owns
itself is the data (a pure function of seed and step, see ``gpt.data``), the learning-rate schedule
(a pure function of the step) and the checkpoint layout (``gpt.checkpoint``); so a resumed run, or
one split differently over processes, sees the same batches and learning rates at every step.

Each concern the loop calls on has its own module: ``gpt.accelerator`` (the Accelerator, device
settings), ``gpt.run_data`` (the data, the resolved model config), ``gpt.step`` (one optimizer
step), ``gpt.step_plan`` (what the end of a step does: log, evaluate, stop, save), ``gpt.evaluation``
(in-loop and final evaluation, one loss core), ``gpt.resume`` (saving and resuming checkpoints),
``gpt.tracking`` (the experiment trackers).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from gpt import activation_checkpointing, collective, cpu, fsdp, guards, hf, perf, resume, runfiles, signals
from gpt.accelerator import build_accelerator
from gpt.budget import TimeBudget
from gpt.config import Config, ModelConfig, TrainConfig, to_dict
from gpt.data import TokenStream
from gpt.evaluation import final_evaluation_done, final_evaluations, sampled_losses
from gpt.faults import fault_point
from gpt.hellaswag import InLoopTasks
from gpt.memory import check_model_fits
from gpt.mixture import Mixture, describe_data
from gpt.model import build_model, num_params
from gpt.optim import build_optimizer
from gpt.plan import accumulation_steps, resolve_micro_batch
from gpt.plot import record_at_step
from gpt.run_data import open_data, resolve_model_config
from gpt.schedule import lr_at
from gpt.spike import SpikeGuard, spike_guard
from gpt.step import batch_stream, train_step
from gpt.step_plan import step_plan
from gpt.tokenizer import Tokenizer
from gpt.tracking import logging_dir, start_tracking, trackers_to_start

# ----------------------------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """What the loop needs, set up once."""

    cfg: Config  # its model section resolved (vocab_size, a pretrained architecture): the one ModelConfig
    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tokenizer: Tokenizer
    train_data: TokenStream
    val_data: TokenStream
    accum: int
    micro_batch_size: int  # train.micro_batch_size resolved ('auto' chosen by gpt.plan); what every pass uses
    start_step: int
    wandb_id: str | None  # the W&B run of the checkpoint resumed from, continued
    resumed_metrics: dict[str, float]  # the evaluation stored in the checkpoint resumed from
    elapsed_s: float  # wall-clock seconds spent by earlier attempts of this run (from the checkpoint)
    guard: SpikeGuard | None  # train.spike_*: skips updates whose loss or gradient norm spikes
    mixture: Mixture  # the datasets rows are drawn from (one without data.mixture), document starts included
    watch: guards.FiniteWatch  # non-finite steps, checked before every save
    lock: runfiles.RunLock  # the out_dir, held by the main process while it trains

    @property
    def model_cfg(self) -> ModelConfig:
        return self.cfg.model


def print0(accelerator: Accelerator, *args: Any) -> None:
    if accelerator.is_main_process:
        print(*args, flush=True)


def setup(cfg: Config) -> Run:
    t = cfg.train
    accelerator = build_accelerator(t, cfg.out_dir, trackers_to_start(cfg), logging_dir(cfg.out_dir), cfg.model.n_embd)
    device = accelerator.device
    lock = runfiles.lock_run_dir(cfg.out_dir, enabled=accelerator.is_main_process)  # one training per out_dir

    tokenizer, sources = open_data(cfg, accelerator)
    model_cfg = resolve_model_config(cfg, tokenizer, sources, accelerator)
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
    if model_cfg.init_from and resume_from is None:
        with accelerator.local_main_process_first():
            hf.load_pretrained(model, model_cfg.init_from)
    model = model.to(device)
    if head_note := cpu.head_precision(model, accelerator, t.cpu_bf16):  # bf16 on CPU: the LM head too?
        print0(accelerator, head_note)
    optimizer = build_optimizer(model, t, device)
    activation_checkpointing.apply(accelerator, model, t.activation_checkpointing, model_cfg.dropout)
    model, optimizer = accelerator.prepare(model, optimizer)
    resume.register_weight_hooks(accelerator)
    if resume_from is not None:
        state = resume.restore(accelerator, resume_from, cfg, tokenizer)
    else:
        state = resume.RunState()
        set_seed(cfg.seed, device_specific=True)  # dropout differs between processes
    return Run(
        cfg, accelerator, model, optimizer, tokenizer, sources[0].train, sources[0].val, accum, micro,
        start_step=state.step, wandb_id=state.wandb_id, resumed_metrics=state.metrics,
        elapsed_s=state.elapsed_s, guard=spike_guard(t, accelerator.mixed_precision, state.spike_guard),
        mixture=Mixture(sources, cfg.seed, model_cfg.block_size),
        watch=guards.FiniteWatch(device, fp16=accelerator.mixed_precision == "fp16"), lock=lock,
    )  # fmt: skip


def derived_settings(run: Run) -> dict[str, Any]:
    """What the run derived from its config and launch, stored with the config in the trackers."""
    cfg, accelerator = run.cfg, run.accelerator
    return {
        "world_size": accelerator.num_processes,
        "accumulation_steps": run.accum,
        "micro_batch_size": run.micro_batch_size,
        "mixed_precision": accelerator.mixed_precision,  # in effect: train.mixed_precision=auto takes the launch's
        "tokens_per_step": cfg.train.batch_size * cfg.model.block_size,
        "n_params": num_params(accelerator.unwrap_model(run.model)),
        "vocab_size": run.model_cfg.vocab_size,
    }


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]  # the last logged value of each metric
    model: torch.nn.Module  # this process's trained model, unwrapped
    is_main_process: bool


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
        return finish(run, run.start_step, run.resumed_metrics | record_at_step(cfg.out_dir, run.start_step))
    if accelerator.is_main_process:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    # the trackers (tracking.loggers), memory, samples, loss.png, the W&B extras
    tracking = start_tracking(
        accelerator, cfg, model, run.tokenizer, run.wandb_id, run.start_step, derived_settings(run)
    )
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
            fault_point("train.step", step)
            timer_steps += 1
            progress.update(1)
            budget.tick(step)

            plan = step_plan(step, t.max_steps, t.log_interval, t.eval_interval, t.checkpoint_interval, budget.spent)
            record: dict[str, Any] = {}
            if plan.log:
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
            if plan.evaluate:
                record |= evaluate(run, tasks)
            stopping = stop.agreed(accelerator, check=plan.check_stop)
            plan = plan.stopping(stopping is not None)
            if record:
                record |= {"step": step, "tokens": step * tokens_per_step}
                last |= record
                log(accelerator, progress, metrics_log, record, next_line_note(step, record, t))
            if plan.evaluate:
                tracking.after_eval(step)
            if plan.save:  # with this step's evaluation, if there was one (keep_best compares those)
                evals = {k: v for k, v in record.items() if k.startswith("eval/")}
                path = resume.save(run, step, tracking.wandb_id, evals, budget.elapsed())
                print0(accelerator, f"saved {path}")
            if plan.reset_timer:  # throughput is measured over training steps only
                timer_start, timer_steps = time.perf_counter(), 0
            if plan.stop:
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
        final = final_evaluations(accelerator, model, run.mixture, run.tokenizer, cfg.model.block_size,
                                  run.micro_batch_size, cfg.out_dir, step)  # fmt: skip
        metrics_log.write(final | {"step": step, "tokens": step * tokens_per_step})
        last |= final
    tracking.finish(step, last)  # the last value of every metric, the final evaluation included, in the W&B summary
    return finish(run, step, last)


def finish(run: Run, step: int, metrics: dict[str, float]) -> TrainResult:
    """End the run (trackers, the out_dir's lock); ``metrics``: the last value of each, final evaluation included."""
    run.accelerator.end_training()
    run.lock.release()
    unwrapped = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    return TrainResult(step, metrics, unwrapped, run.accelerator.is_main_process)


def evaluate(run: Run, tasks: InLoopTasks | None = None) -> dict[str, float]:
    """The in-loop evaluation: mean loss (eval/*) over train.eval_windows fixed windows of each split,
    and the train.eval_tasks."""
    cfg, accelerator = run.cfg, run.accelerator
    losses = sampled_losses(run.model, run.mixture.eval_splits(), cfg.seed, cfg.train.eval_windows,
                            cfg.model.block_size, run.micro_batch_size, accelerator)  # fmt: skip
    record = {f"eval/{k}": v for k, v in run.mixture.with_weighted_means(losses).items()}
    if tasks is not None:  # four endings an item: items per pass ~ sequences of a micro batch
        items_per_pass = max(1, run.micro_batch_size // 4)
        record |= tasks.evaluate(run.model, cfg.model.block_size, cfg.model.vocab_size, items_per_pass, accelerator)
    return record


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
