"""The estimates: how a global batch splits over the processes, and the memory one GPU needs for a
training step (see gpt.plan). Nothing here needs torch or a GPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gpt import perf
from gpt.config import ModelConfig, TrainConfig
from gpt.errors import UserError

GIB = 2**30
ALLOCATOR_SLACK = 0.10  # the caching allocator's fragmentation, on top of what the step keeps alive
RUNTIME_GIB = 1.0  # CUDA context, cuBLAS and NCCL workspaces: outside torch's accounting, on the device


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
