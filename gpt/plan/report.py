"""python -m gpt.plan: a planned run on a named GPU and topology, printed with what to change when it
does not fit (see gpt.plan)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from gpt import perf
from gpt.config import POSITIVE, Config, ModelConfig, TrainConfig, doc, load_config, parse_command
from gpt.errors import UserError
from gpt.plan.estimate import (
    ALLOCATOR_SLACK,
    GIB,
    RUNTIME_GIB,
    Memory,
    accumulation_steps,
    estimate_memory,
    param_count,
    resolve_micro_batch,
)

OPENAI_GPT2 = {  # model.init_from hub ids -> (n_layer, n_head, n_embd): the architecture comes from them
    "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600),
}  # fmt: skip


@dataclass(frozen=True)
class GpuKind:
    device_name: str  # as torch.cuda.get_device_name() reads, for the peak in gpt.perf
    memory_gib: float  # total memory as torch.cuda.get_device_properties() reports it (approximately)


GPU_KINDS = {
    "a100-40gb": GpuKind("NVIDIA A100-SXM4-40GB", 39.4),
    "a100-80gb": GpuKind("NVIDIA A100-SXM4-80GB", 79.2),
    "h100-80gb": GpuKind("NVIDIA H100 80GB HBM3", 79.1),
    "h200-141gb": GpuKind("NVIDIA H200", 139.8),
    "l4-24gb": GpuKind("NVIDIA L4", 22.0),
    "rtx4090-24gb": GpuKind("NVIDIA GeForce RTX 4090", 23.6),
}
GpuName = Literal[tuple(GPU_KINDS)]  # type: ignore[valid-type]  # the names above: --gpu's choices


# ----------------------------------------------------------------------------------------------
# The plan of a run, and what to change when it does not fit


def planning_vocab(cfg: Config) -> tuple[int, str]:
    """The vocabulary size training would take: model.vocab_size, else the prepared data's tokenizer,
    else the built-in dataset's, else GPT-2's (said so)."""
    from pathlib import Path

    from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, load_tokenizer

    if cfg.model.vocab_size:
        return cfg.model.vocab_size, "model.vocab_size"
    path = Path(cfg.data.root) / cfg.data.dataset / "tokenizer.json"
    if path.is_file():
        return load_tokenizer(path).vocab_size, str(path)
    from gpt.prepared import BUILTIN_DATASETS

    if cfg.data.dataset in BUILTIN_DATASETS:
        text, kind = BUILTIN_DATASETS[cfg.data.dataset]
        tokenizer = CharTokenizer.from_text(text.read_text(encoding="utf-8")) if kind == "char" else GPT2Tokenizer()
        return tokenizer.vocab_size, f"the built-in {cfg.data.dataset}"
    return GPT2Tokenizer().vocab_size, f"GPT-2's, assumed: {path} not found (pass model.vocab_size=N)"


def planning_model(cfg: Config) -> tuple[ModelConfig, str]:
    """The model as training would build it (vocabulary filled in, a GPT-2 hub id's architecture)."""
    m = ModelConfig(**vars(cfg.model))
    m.vocab_size, vocab_from = planning_vocab(cfg)
    if m.init_from in OPENAI_GPT2:
        m.n_layer, m.n_head, m.n_embd = OPENAI_GPT2[m.init_from]
        m.gelu = "tanh"
    return m, vocab_from


@dataclass
class Plan:
    world: int
    micro: int
    micro_why: str
    accum: int
    tokens_per_step: int
    memory: Memory
    device_memory: int

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.device_memory


def make_plan(cfg: Config, model: ModelConfig, world: int, kind: GpuKind, bits16: bool, fsdp: bool) -> Plan:
    device_memory = int(kind.memory_gib * GIB)
    micro, why = resolve_micro_batch(cfg.train, model, world, device_memory, "bf16" if bits16 else "no", fsdp)
    memory = estimate_memory(model, cfg.train, micro, world, bits16, fsdp)
    accum = accumulation_steps(cfg.train.batch_size, micro, world)
    return Plan(world, micro, why, accum, cfg.train.batch_size * model.block_size, memory, device_memory)


def what_to_change(cfg: Config, model: ModelConfig, plan: Plan, kind: GpuKind, bits16: bool, fsdp: bool) -> str:
    """One line: the changes, each on its own, that make a plan which does not fit fit."""
    t = cfg.train

    def fitting(world: int = plan.world, sharded: bool = fsdp, **train: object) -> Plan | None:
        trial = Config(**(vars(cfg) | {"train": TrainConfig(**(vars(t) | train))}))
        try:
            built = make_plan(trial, model, world, kind, bits16, sharded)
        except UserError:
            return None
        return built if built.fits else None

    fixes = []
    if t.micro_batch_size != "auto" and (smaller := fitting(micro_batch_size="auto")):
        fixes.append(f"a smaller micro batch (train.micro_batch_size={smaller.micro}, or auto)")
    if not t.activation_checkpointing and fitting(activation_checkpointing=True):
        fixes.append("activation checkpointing (train.activation_checkpointing=true)")
    if not fsdp and plan.world > 1 and fitting(sharded=True):
        fixes.append("FSDP (--fsdp; launch with launch/fsdp.yaml)")
    if more := next((w for w in (2 * plan.world, 4 * plan.world, 8 * plan.world) if fitting(world=w)), None):
        fixes.append(f"more GPUs ({more} in all)")
    if not fixes:
        return "no single change fits: use a GPU with more memory, combine the changes above, or a smaller model"
    return "change one of: " + "; ".join(fixes)


def report(cfg: Config, args: PlanOptions) -> tuple[list[str], dict, str | None]:
    """The lines to print, the JSON record, and what to change when the plan does not fit."""
    kind = GPU_KINDS[args.gpu]
    world = args.gpus * args.nodes
    precision = cfg.train.mixed_precision if cfg.train.mixed_precision != "auto" else "bf16"
    bits16 = precision in ("bf16", "fp16")
    model, vocab_from = planning_model(cfg)
    plan = make_plan(cfg, model, world, kind, bits16, args.fsdp)
    mem = plan.memory

    def gib(b: int) -> str:
        return f"{b / GIB:8.2f} GiB"

    tokens = plan.micro * model.block_size
    shape = f"{model.n_layer} layers, {model.n_head} heads, {model.n_embd} wide"
    shape = "bigram table" if model.kind == "bigram" else shape
    lines = [
        f"{world} x {args.gpu} ({args.nodes} node(s) x {args.gpus}), {'FSDP' if args.fsdp else 'DDP'}, "
        f"{precision} {'autocast' if bits16 else '(fp32, TF32 matmuls)'}"
        + (", activation checkpointing" if cfg.train.activation_checkpointing else ""),
        f"model: {shape}, context {model.block_size}, vocabulary {model.vocab_size:,} (from {vocab_from}); "
        f"{param_count(model):,} parameters",
        f"split: global batch {cfg.train.batch_size} = micro batch {plan.micro} x {world} processes x {plan.accum} "
        f"accumulation step(s); {plan.tokens_per_step:,} tokens/step",
        f"  micro batch {plan.micro_why}",
        "memory per GPU (estimate):",
        f"  weights          {gib(mem.weights)}  {mem.notes['weights']}",
        f"  gradients        {gib(mem.gradients)}  {mem.notes['gradients']}",
        f"  optimizer state  {gib(mem.optimizer)}  {mem.notes['optimizer']}",
        f"  activations      {gib(mem.blocks)}  {model.n_layer} blocks, {mem.per_block / GIB:.3f} GiB per block "
        f"({plan.micro} x {model.block_size} = {tokens:,} tokens)"
        + (" (checkpointed: block inputs + one block recomputed)" if cfg.train.activation_checkpointing else ""),
        f"  logits/loss      {gib(mem.logits_loss)}  "
        + (f"in pieces of {model.loss_chunk_tokens} tokens" if model.loss_chunk_tokens else "whole logits")
        + f" ({model.padded_vocab_size:,} per token); embeddings, head input {mem.other_activations / GIB:.2f} GiB",
        f"  allowances       {gib(mem.slack + int(RUNTIME_GIB * GIB))}  allocator {ALLOCATOR_SLACK:.0%}, "
        f"CUDA runtime {RUNTIME_GIB:g} GiB",
        f"  total            {gib(mem.total)}  of {kind.memory_gib:g} GiB: "
        + (f"fits, {(plan.device_memory - mem.total) / GIB:.1f} GiB headroom" if plan.fits else "DOES NOT FIT"),
    ]
    flops = perf.flops_per_token(model)
    peak = perf.lookup_peak(kind.device_name, "bf16" if bits16 else "tf32")
    record = {
        "world_size": world, "micro_batch_size": plan.micro, "accumulation_steps": plan.accum,
        "tokens_per_step": plan.tokens_per_step, "memory_gib": round(mem.total / GIB, 2),
        "device_memory_gib": kind.memory_gib, "fits": plan.fits, "gpu": args.gpu, "fsdp": args.fsdp,
        "mixed_precision": precision, "params": param_count(model), "flops_per_token": flops,
        "memory_parts_gib": {part: round(getattr(mem, part) / GIB, 3) for part in
                             ("weights", "gradients", "optimizer", "blocks", "other_activations", "logits_loss")},
    }  # fmt: skip
    if peak is not None and flops:
        recompute = 4 / 3 if cfg.train.activation_checkpointing else 1.0  # the forward pass runs twice
        step_s = flops * plan.tokens_per_step * recompute / (world * peak.tflops * 1e12 * args.mfu)
        per_day = plan.tokens_per_step / step_s * 86400
        lines.append(
            f"compute: {flops / 1e6:,.1f} MFLOP/token (gpt.perf); at {args.mfu:.0%} MFU of the {peak.label} "
            f"({peak.tflops:g} TFLOP/s): {step_s * 1000:,.1f} ms/step, {per_day / 1e9:,.2f}B tokens/day"
        )
        record |= {"mfu": args.mfu, "step_ms": round(step_s * 1000, 2), "tokens_per_day": round(per_day)}
    change = None if plan.fits else what_to_change(cfg, model, plan, kind, bits16, args.fsdp)
    return lines, record, change


@dataclass
class PlanOptions:
    """The options of python -m gpt.plan (the model and batch come from the training config)."""

    gpus: int = doc(1, "GPUs per node (processes per node).", check=POSITIVE)
    nodes: int = doc(1, "Machines.", check=POSITIVE)
    gpu: GpuName = doc("h100-80gb", "The GPU.")
    fsdp: bool = doc(False, "Shard weights, gradients and optimizer state (FSDP).")
    mfu: float = doc(0.4, "Model FLOPs utilisation for the step time.", check="(0, 1]")


def main(argv: list[str]) -> int:
    import gpt.plan

    args, config_args = parse_command(PlanOptions, argv, "python -m gpt.plan", gpt.plan.__doc__)
    lines, record, change = report(load_config(config_args), args)
    print("\n".join(lines))
    print(json.dumps(record), flush=True)
    if change:
        needed = f"{record['memory_gib']:.1f} GiB > {record['device_memory_gib']:g} GiB"
        raise UserError(f"the plan does not fit one {args.gpu} ({needed}); {change}")
    return 0
