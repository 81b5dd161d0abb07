"""Plan a run before launching it: how the global batch splits over the processes, the memory one GPU
needs, and how long a step takes. Needs no GPU and no process group (torch is imported only to read a
built-in dataset's vocabulary).

    python -m gpt.plan shakespeare_char --gpus 8 --gpu h100-80gb
    python -m gpt.plan gpt2_124m_fineweb --gpus 8 --nodes 2 --gpu a100-40gb
    python -m gpt.plan gpt2_124m_fineweb train.micro_batch_size=8 --gpus 4 --gpu l4-24gb --fsdp

It prints the split (processes, micro batch, accumulation steps, tokens per step), the per-GPU memory
by part (weights, gradients, optimizer state, activations per block, logits and loss, an allowance for
the allocator and the CUDA runtime) against the GPU's memory, and the FLOPs per token with the step
time and tokens per day at a stated MFU; its last line is one JSON object. Exit status 0 when the plan
fits, 2 (with one line saying what to change) when it does not. ``train.micro_batch_size=auto``, in
training, chooses the micro batch with the same estimate (``resolve_micro_batch``).

The memory model counts what a training step keeps alive, tensor by tensor, for the trainer as written:
fp32 master weights, gradients and AdamW moments (divided over the processes under FSDP), 16-bit copies
of the weights under autocast, and the activations each operation saves for the backward pass. The
activation terms are checked against the tensors a CPU training step really saves (tests/test_plan.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from gpt import perf
from gpt.config import Config, ModelConfig, TrainConfig, load_config
from gpt.errors import UserError, run_main

GIB = 2**30
ALLOCATOR_SLACK = 0.10  # the caching allocator's fragmentation, on top of what the step keeps alive
RUNTIME_GIB = 1.0  # CUDA context, cuBLAS and NCCL workspaces: outside torch's accounting, on the device
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


# ----------------------------------------------------------------------------------------------
# The split of the global batch


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Gradient accumulation steps so that micro_batch_size * world_size * steps == batch_size."""
    per_pass = micro_batch_size * world_size
    if batch_size % per_pass:
        raise UserError(
            f"train.batch_size ({batch_size}) is not a multiple of train.micro_batch_size ({micro_batch_size}) x "
            f"{world_size} processes = {per_pass}; choose a batch_size divisible by {per_pass} or another micro batch "
            "(or train.micro_batch_size=auto)"
        )
    return batch_size // per_pass


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Sequences per optimizer step on each process; every process must get the same number."""
    if batch_size % world_size:
        raise UserError(
            f"train.batch_size ({batch_size}) cannot be split evenly over {world_size} processes; "
            f"choose a batch_size that is a multiple of {world_size}"
        )
    return batch_size // world_size


def choose_micro_batch(batch_size: int, world_size: int, fits: Callable[[int], bool] | None) -> tuple[int, str]:
    """train.micro_batch_size=auto: the largest divisor of batch_size / world_size that fits (``fits``,
    None where memory is not estimated, e.g. on CPU); 1 when none does. Returns it and why."""
    share = per_process_batch(batch_size, world_size)
    where = f"batch_size {batch_size} / {world_size} process(es) = {share}"
    if fits is None:
        return share, f"all of {where} in one pass (memory is checked on GPUs only)"
    for micro in (d for d in range(share, 0, -1) if share % d == 0):
        if fits(micro):
            return micro, f"the largest divisor of {where} that fits the GPU's memory by gpt.plan's estimate"
    return 1, "not even 1 fits the GPU's memory by gpt.plan's estimate (python -m gpt.plan says what to change)"


# ----------------------------------------------------------------------------------------------
# Memory


def param_count(cfg: ModelConfig) -> int:
    """Every parameter of the GPT (tied head counted once), as gpt.model builds it."""
    C, V = cfg.n_embd, cfg.padded_vocab_size
    if cfg.kind == "bigram":
        return cfg.vocab_size * cfg.vocab_size
    norm = C if cfg.norm == "rmsnorm" or not cfg.bias else 2 * C
    biases = (3 * C + C + 4 * C + C) if cfg.bias else 0  # qkv, attention out, MLP in, MLP out
    per_block = 12 * C * C + biases + 2 * norm
    embeddings = V * C + (cfg.block_size * C if cfg.position == "learned" else 0)
    return embeddings + cfg.n_layer * per_block + norm + (0 if cfg.tie_head else V * C)


def block_activation_bytes(cfg: ModelConfig, tokens: int, bits16: bool, cuda: bool = True) -> int:
    """What one Block saves for its backward pass over ``tokens`` positions (micro batch x context).

    Under autocast the residual stream stays fp32 (the norms save it) while matmul inputs and outputs
    are 16-bit; without it, everything is fp32. Per token, C = n_embd, a = bytes of an activation:
    two norm inputs (2 x 4C, with their statistics; see norm_bytes), the qkv input (aC), queries, keys and values (3aC,
    one tensor), the attention output (aC, also the projection's input), the MLP input (aC), its 4C-wide
    hidden layer before and after the non-linearity (2 x 4aC): 36C under autocast, 64C in fp32. Fused
    attention adds one fp32 number per head and position. QK-norm or rotary embeddings make new queries
    and keys (2aC; QK-norm under autocast also keeps their fp32 form, 8C). Written-out attention keeps
    the T x T probabilities per head: fp32 and a 16-bit copy under CUDA's autocast (6 bytes), 16-bit
    under the CPU's (2), fp32 without (4). Dropout keeps a mask per element it drops from (on GPUs,
    where fused attention applies its dropout inside the kernel).
    """
    C, T, nh = cfg.n_embd, cfg.block_size, cfg.n_head
    a = 2 if bits16 else 4
    explicit = cfg.attention == "explicit"
    per_token = 2 * norm_bytes(cfg) + a * C + 3 * a * C + a * C + a * C + 2 * 4 * a * C
    if (cfg.qk_norm or cfg.position == "rope") and not explicit:  # written out, the matmuls save copies instead
        per_token += 2 * a * C
    if cfg.qk_norm:  # its statistics, and its input: an fp32 copy under autocast, else all of q, k, v
        per_token += 8 * nh + (8 * C if bits16 else (3 * a * C if explicit else 0))
    if explicit:
        probabilities = (6 if cuda else 2) if bits16 else 4
        per_token += nh * T * probabilities
    else:
        per_token += 4 * nh  # log-sum-exp of each head's scores
    if cfg.dropout:
        per_token += 2 * C * (1 if cuda else a)  # the masks of the two residual branches
    return tokens * per_token


def norm_bytes(cfg: ModelConfig) -> int:
    """What one norm saves per token: its fp32 input and statistics; RMSNorm also its normalised input."""
    return 8 * cfg.n_embd + 4 if cfg.norm == "rmsnorm" else 4 * cfg.n_embd + 8


def embedding_and_head_bytes(cfg: ModelConfig, tokens: int, bits16: bool) -> int:
    """The activations outside the blocks, logits aside: token ids, final norm input and head input."""
    a = 2 if bits16 else 4
    return tokens * (8 + norm_bytes(cfg) + a * cfg.n_embd + (cfg.n_embd if cfg.dropout else 0))


def logits_loss_bytes(rows: int, vocab: int, bits16: bool, chunk_rows: int | None = None) -> int:
    """Peak memory of the logits and the cross-entropy over ``rows`` token positions.

    Whole logits (``chunk_rows`` None): the logits in the compute dtype, their fp32 log-probabilities
    (saved for the backward pass) and, in the backward pass, the fp32 gradient that flows back and the
    gradient of the logits: 2 + 4 + 4 + 2 bytes per logit under autocast, 4 x 4 in fp32. Chunked over
    the rows (a chunk's logits made, used and dropped, then recomputed in the backward pass from the
    saved hidden states, counted in embedding_and_head_bytes): the same for one chunk of ``chunk_rows``.
    """
    live = rows if chunk_rows is None else min(rows, chunk_rows)
    return live * vocab * (12 if bits16 else 16)


@dataclass
class Memory:
    """Bytes one GPU needs at the peak of a training step, by part."""

    weights: int
    gradients: int
    optimizer: int
    per_block: int
    blocks: int  # all blocks' saved activations (with checkpointing: inputs, plus one block recomputed)
    other_activations: int  # embeddings, final norm and head input
    logits_loss: int
    notes: dict[str, str]

    @property
    def activations(self) -> int:
        return self.blocks + self.other_activations + self.logits_loss

    @property
    def subtotal(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def slack(self) -> int:
        return int(ALLOCATOR_SLACK * self.subtotal)

    @property
    def total(self) -> int:
        return self.subtotal + self.slack + int(RUNTIME_GIB * GIB)


def estimate_memory(cfg: ModelConfig, t: TrainConfig, micro_batch: int, world: int, bits16: bool, fsdp: bool) -> Memory:
    """Per-GPU memory of a training step of ``micro_batch`` sequences on one of ``world`` processes."""
    n = param_count(cfg)
    shard = world if fsdp else 1
    blocks_matrices = perf.matmul_params(cfg) - cfg.padded_vocab_size * cfg.n_embd
    per_block_params = (n - cfg.padded_vocab_size * cfg.n_embd) // max(1, cfg.n_layer)
    if fsdp:  # whole weights gathered for the unit running and the one prefetched (or the root: embeddings, head)
        copies = (2 if bits16 else 4) * max(2 * per_block_params, n - cfg.n_layer * per_block_params)
        copy_note = "the gathered weights of two FSDP units"
    else:  # autocast's 16-bit copies of the matmul weights live until their backward
        copies = 2 * perf.matmul_params(cfg) if bits16 else 0
        copy_note = "16-bit copies of the matmul weights (autocast)"
    buckets = 4 * n if world > 1 and not fsdp else 0  # DDP's communication buckets: a second fp32 copy
    # AdamW: two fp32 moments per weight; Muon: one momentum per block matrix, AdamW for the rest
    optimizer = (4 * blocks_matrices + 8 * (n - blocks_matrices) if t.optimizer == "muon" else 8 * n) // shard
    tokens = micro_batch * cfg.block_size
    per_block = block_activation_bytes(cfg, tokens, bits16)
    other = embedding_and_head_bytes(cfg, tokens, bits16)
    if cfg.kind == "bigram":  # a table lookup: no blocks, the token ids and the logits are all
        per_block, blocks, other = 0, 0, 8 * tokens
    elif t.activation_checkpointing:  # each block keeps its fp32 input; the backward recomputes one at a time
        blocks = cfg.n_layer * tokens * 4 * cfg.n_embd + per_block
    else:
        blocks = cfg.n_layer * per_block
    notes = {
        "weights": f"fp32 master weights{' (sharded)' if fsdp else ''}" + (f" + {copy_note}" if copies else ""),
        "gradients": "fp32"
        + (" (sharded)" if fsdp else "")
        + (" + DDP's fp32 communication buckets" if buckets else ""),
        "optimizer": ("Muon momentum + AdamW moments" if t.optimizer == "muon" else "AdamW: two fp32 moments")
        + (" (sharded)" if fsdp else ""),
    }
    return Memory(
        weights=4 * n // shard + copies,
        gradients=4 * n // shard + buckets,
        optimizer=optimizer,
        per_block=per_block,
        blocks=blocks,
        other_activations=other,
        logits_loss=logits_loss_bytes(tokens, cfg.padded_vocab_size, bits16, cfg.loss_chunk_tokens or None),
        notes=notes,
    )


def resolve_micro_batch(
    t: TrainConfig, cfg: ModelConfig, world: int, device_memory_bytes: int | None, mixed_precision: str, fsdp: bool
) -> tuple[int, str]:
    """The micro batch a run uses: train.micro_batch_size, or for 'auto' the largest divisor of
    batch_size / world that fits the device's memory (when known) by estimate_memory. Returns it
    and a line saying why; refuses a split that does not divide evenly."""
    if t.micro_batch_size != "auto":
        accumulation_steps(t.batch_size, t.micro_batch_size, world)
        return t.micro_batch_size, f"{t.micro_batch_size} (train.micro_batch_size)"
    fits = None
    if device_memory_bytes is not None:
        bits16 = mixed_precision in ("bf16", "fp16")
        fits = lambda micro: estimate_memory(cfg, t, micro, world, bits16, fsdp).total <= device_memory_bytes  # noqa: E731
    micro, why = choose_micro_batch(t.batch_size, world, fits)
    return micro, f"{micro} (train.micro_batch_size=auto): {why}"


# ----------------------------------------------------------------------------------------------
# The command line


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


def report(cfg: Config, args: argparse.Namespace) -> tuple[list[str], dict, str | None]:
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


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m gpt.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node (processes per node)")
    parser.add_argument("--nodes", type=int, default=1, help="machines")
    parser.add_argument("--gpu", choices=sorted(GPU_KINDS), default="h100-80gb", help="the GPU")
    parser.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimizer state (FSDP)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for the step time")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("--") and "=" not in a]
    if unknown:
        parser.error(f"unknown option {unknown[0]}")
    if args.gpus < 1 or args.nodes < 1 or not 0 < args.mfu <= 1:
        raise UserError("--gpus and --nodes must be at least 1 and --mfu in (0, 1]")
    return args, rest


def main(argv: list[str]) -> int:
    args, rest = parse_args(argv)
    lines, record, change = report(load_config(rest), args)
    print("\n".join(lines))
    if change:
        needed = f"{record['memory_gib']:.1f} GiB > {record['device_memory_gib']:g} GiB"
        print(f"error: the plan does not fit one {args.gpu} ({needed}); {change}", file=sys.stderr)
    print(json.dumps(record), flush=True)
    return 0 if change is None else 2


if __name__ == "__main__":
    run_main(main)
