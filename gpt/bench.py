"""Time training steps: median ms per optimizer step, tokens/s, model FLOPs per token, MFU and peak memory.

    python -m gpt.bench                                    # the default model, on this machine
    python -m gpt.bench shakespeare_char --steps 20        # a preset, with key=value overrides as in train.py
    python -m gpt.bench model.n_layer=4 --bare             # the same model and batches in a plain PyTorch loop
    python -m gpt.bench --compare                          # trainer and plain loop in alternating rounds
    accelerate launch --config_file launch/single_node.yaml -m gpt.bench bench_gpt2_124m train.batch_size=96

The trainer mode runs the trainer's own set-up and step (``gpt.trainer.setup`` and ``train_step``:
accelerate, the background batch stream, clipping, the optimizer) for ``--warmup`` untimed and
``--steps`` timed optimizer steps. The plain loop (``--bare``) builds the same model with the same seed
and the same optimizer, reads the same batches synchronously and steps with bare PyTorch, so the two
compute the same losses; the difference in time is what the trainer adds. Nothing is written to disk
except a prepared built-in dataset, and W&B is off.

Each step is timed on its own (CUDA events on GPU, so timing adds no host sync). The report gives the
median and the spread, tokens/s of the whole launch at the median, model FLOPs per token (6N +
12 * n_layer * n_embd * block_size, see gpt.perf), the FLOP/s that makes, MFU against the GPU's dense
peak in the precision its matmuls run in (gpt.perf.PEAK_TFLOPS; on CPU only with --peak_tflops), the peak
memory (allocated GPU memory, or the process's peak resident set on CPU), and one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpt.config import NON_NEGATIVE, POSITIVE, Config, ModelConfig, doc, load_config, parse_command
from gpt.errors import UserError, run_main

if TYPE_CHECKING:  # torch loads after the arguments are read: --help answers at once
    import torch


class StepTimer:
    """Per-step durations: CUDA events recorded on the stream (no host sync until the end), or wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Durations between consecutive marks."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


@dataclass
class Runner:
    """Steps one way of training (trainer or plain loop); keeps its step count between calls."""

    name: str
    device: torch.device
    num_processes: int
    model_cfg: ModelConfig  # vocab_size filled in from the data
    micro_batch_size: int  # train.micro_batch_size resolved ('auto')
    mixed_precision: str  # in effect
    step_fn: Any  # (step) -> loss tensor of that step
    step: int = 0
    last_loss: torch.Tensor | None = field(default=None, repr=False)

    def run(self, n: int, label: str = "") -> list[float]:
        """Run n optimizer steps; the duration of each, in seconds. With a label, say on stderr (main
        process) when the first step is done and then every PROGRESS_S seconds, so that slow steps
        are not silent."""
        timer = StepTimer(self.device)
        timer.mark()
        start = shown = time.perf_counter()
        for i in range(1, n + 1):
            self.last_loss = self.step_fn(self.step)
            self.step += 1
            timer.mark()
            now = time.perf_counter()
            if label and is_main_process() and (i == 1 or now - shown >= PROGRESS_S) and i < n:
                print(f"{label}: {i} of {n} steps in {now - start:.1f} s", file=sys.stderr, flush=True)
                shown = now
        return timer.seconds()


PROGRESS_S = 10.0


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def trainer_runner(cfg: Config) -> Runner:
    """The trainer's set-up and step: gpt.trainer.setup, batch_stream, lr_at and train_step."""
    from gpt.schedule import lr_at
    from gpt.trainer import batch_stream, setup, train_step

    run = setup(cfg)
    batches = batch_stream(run, 0)
    run.model.train()

    def step_fn(step: int) -> torch.Tensor:
        loss_sum, _ = train_step(run, batches, lr_at(step, cfg.train))
        return loss_sum / run.accum

    accelerator = run.accelerator
    return Runner("trainer", accelerator.device, accelerator.num_processes, run.model_cfg, run.micro_batch_size,
                  accelerator.mixed_precision, step_fn)  # fmt: skip


def bare_runner(cfg: Config) -> Runner:
    """A plain PyTorch loop on the same model, seed, optimizer, schedule and batches; no accelerate."""
    import torch

    from gpt import perf
    from gpt.data import TokenStream, split_files, step_window_starts, to_inputs_targets
    from gpt.model import build_model
    from gpt.optim import build_optimizer, set_lr
    from gpt.plan import accumulation_steps, resolve_micro_batch
    from gpt.prepared import ensure_dataset
    from gpt.schedule import lr_at
    from gpt.tokenizer import load_tokenizer

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--bare and --compare time one process; run them without a multi-process launcher")
    t = cfg.train
    folder = ensure_dataset(cfg.data.root, cfg.data.dataset)
    data = TokenStream(split_files(folder, "train"))
    data.check_fits(cfg.model.block_size)
    model_cfg = dataclasses.replace(cfg.model)
    model_cfg.vocab_size = model_cfg.vocab_size or load_tokenizer(folder / "tokenizer.json").vocab_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    perf.set_matmul_precision(t.matmul_precision, device)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    optimizer = build_optimizer(model, t, device)
    if t.compile:
        model = torch.compile(model)
    model.train()
    precision = "no" if t.mixed_precision == "auto" else t.mixed_precision  # the plain loop has no launch to ask
    micro = resolve_micro_batch(t, model_cfg, 1, perf.device_memory_bytes(device), precision, False)[0]
    accum = accumulation_steps(t.batch_size, micro, 1)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if t.mixed_precision == "fp16" else None
    T = cfg.model.block_size

    def step_fn(step: int) -> torch.Tensor:
        set_lr(optimizer, lr_at(step, t))
        starts = step_window_starts(cfg.seed, step, t.batch_size, len(data), T)
        loss_sum = torch.zeros((), device=device)
        for m in range(accum):
            x, y = to_inputs_targets(data.windows(starts[m * micro : (m + 1) * micro], T + 1))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                _, loss = model(x, y)
            scaled = loss / accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach()
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else float("inf"))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss_sum / accum

    return Runner("bare", device, 1, model_cfg, micro, precision, step_fn)


def device_name(device: torch.device) -> str:
    import torch

    from gpt.cpu import cpu_model

    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def summarise(runner: Runner, seconds: list[float], cfg: Config, args: BenchOptions) -> dict[str, Any]:
    """The JSON record of one timed run."""
    import torch

    from gpt import perf

    m, t = cfg.model, cfg.train
    median = statistics.median(seconds)
    tokens_per_step = t.batch_size * m.block_size  # the global batch, over all processes
    tokens_per_s = tokens_per_step / median
    flops = perf.flops_per_token(runner.model_cfg)
    peak = perf.training_peak(args.peak_tflops, runner.device, runner.mixed_precision)
    utilisation = perf.mfu(flops, tokens_per_s, runner.num_processes, peak.tflops if peak else None)
    return {
        "mode": runner.name,
        "device": runner.device.type,
        "device_name": device_name(runner.device),
        "processes": runner.num_processes,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": {k: getattr(m, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
        | {"vocab_size": runner.model_cfg.padded_vocab_size},
        "batch_size": t.batch_size,
        "micro_batch_size": runner.micro_batch_size,
        "mixed_precision": runner.mixed_precision,
        "compile": t.compile,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "optimizer": t.optimizer,
        "warmup_steps": args.warmup,
        "timed_steps": len(seconds),
        "step_ms_median": round(1000 * median, 3),
        "step_ms_p10": round(1000 * _quantile(seconds, 0.1), 3),
        "step_ms_p90": round(1000 * _quantile(seconds, 0.9), 3),
        "tokens_per_s": round(tokens_per_s, 1),
        "flops_per_token": flops,
        "tflops": round(flops * tokens_per_s / 1e12, 4),
        "peak_tflops": peak.tflops if peak else None,
        "peak": peak.label if peak else None,
        "mfu": utilisation,
        "peak_memory_mib": round(perf.peak_memory_bytes(runner.device) / 2**20, 1),
        "final_loss": None if runner.last_loss is None else round(runner.last_loss.item(), 6),
        "step_ms": [round(1000 * x, 3) for x in seconds],
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(record: dict[str, Any]) -> str:
    m = record["model"]
    mfu = "n/a (no peak for this device; pass --peak_tflops)"
    if record["mfu"] is not None:
        mfu = f"{record['mfu']:.1%} (of the {record['peak']}, {record['peak_tflops']:g} TFLOP/s)"
    memory = "peak GPU memory" if record["device"] == "cuda" else "peak RSS"
    return "\n".join(
        [
            f"{record['mode']}: {record['processes']} process(es) on {record['device_name']} "
            f"({record['threads']} threads), mixed precision {record['mixed_precision']}, "
            f"fp32 matmuls {record['matmul_precision']}, compile {record['compile']}, optimizer {record['optimizer']}",
            f"model: {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, context {m['block_size']}, "
            f"vocabulary {m['vocab_size']}; batch {record['batch_size']} x {m['block_size']} tokens "
            f"(micro batch {record['micro_batch_size']})",
            f"{record['timed_steps']} timed steps after {record['warmup_steps']} warm-up: median "
            f"{record['step_ms_median']:.2f} ms/step (p10 {record['step_ms_p10']:.2f}, p90 {record['step_ms_p90']:.2f})"
            f" | {record['tokens_per_s']:,.0f} tokens/s | {record['flops_per_token'] / 1e6:.2f} MFLOP/token | "
            f"{record['tflops']:.4f} TFLOP/s | MFU {mfu} | {memory} {record['peak_memory_mib']:,.0f} MiB",
        ]
    )


@dataclass
class BenchOptions:
    """The options of python -m gpt.bench (the model, batch and precision come from the training config)."""

    steps: int = doc(30, "Timed optimizer steps.", check=POSITIVE)
    warmup: int = doc(5, "Untimed steps first, compilation included.", check=NON_NEGATIVE)
    peak_tflops: float = doc(0.0, "Peak TFLOP/s of one device, for MFU; 0: looked up by GPU.", check=NON_NEGATIVE)
    threads: int = doc(0, "torch intra-op threads; 0: torch's choice.", check=NON_NEGATIVE)
    bare: bool = doc(False, "Time the plain PyTorch loop instead of the trainer.")
    compare: bool = doc(False, "Time the plain loop and the trainer in alternating rounds.")
    rounds: int = doc(3, "Rounds of --steps each, with --compare.", check=POSITIVE)


def parse_args(argv: list[str]) -> tuple[BenchOptions, list[str]]:
    """The bench's options and the training config's arguments (``[PRESET] [key.sub=value ...]``)."""
    args, config_args = parse_command(BenchOptions, argv, "python -m gpt.bench", __doc__)
    if args.bare and args.compare:
        raise UserError("--bare and --compare exclude each other: --compare times both")
    return args, config_args


def bench_config(rest: list[str]) -> Config:
    cfg = load_config(rest)
    cfg.out_dir = os.path.join(tempfile.gettempdir(), f"gpt-bench-{os.getpid()}")  # nothing is written there
    cfg.resume = "false"
    cfg.wandb.mode = "disabled"
    cfg.train.time_budget_s = 0.0
    return cfg


def run_in_subprocess(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m gpt.bench ARGS`` in a fresh process (its own peak memory and threads) and return
    its JSON record; for sweeps such as bench/scaling.py."""
    import subprocess

    full_env = dict(os.environ) | {"WANDB_MODE": "disabled"} | (env or {})
    r = subprocess.run(
        [sys.executable, "-m", "gpt.bench", *args], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if r.returncode != 0:
        raise RuntimeError(f"python -m gpt.bench {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    args, rest = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = bench_config(rest)
    if args.compare:
        return compare(cfg, args)
    runner = bare_runner(cfg) if args.bare else trainer_runner(cfg)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    runner.run(args.warmup, "warm-up")
    seconds = runner.run(args.steps, "timed")
    if is_main_process():
        record = summarise(runner, seconds, cfg, args)
        print(describe(record))
        print(json.dumps(record), flush=True)
    return 0


def compare(cfg: Config, args: BenchOptions) -> int:
    """Plain loop and trainer in alternating rounds in one process, so that both see the same machine state."""
    runners = [bare_runner(cfg), trainer_runner(cfg)]
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for r in runners:
        r.run(args.warmup)
    for _ in range(args.rounds):
        for r in runners:
            times[r.name] += r.run(args.steps)
    records = [summarise(r, times[r.name], cfg, args) for r in runners]
    for record in records:
        print(describe(record))
    bare, trainer = (rec["step_ms_median"] for rec in records)
    print(f"trainer / bare median step time: {trainer / bare:.3f} ({trainer:.2f} ms vs {bare:.2f} ms)")
    print(json.dumps({"compare": records, "ratio_trainer_to_bare": round(trainer / bare, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
