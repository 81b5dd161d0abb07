"""How fast decoding could be on this machine: the bytes and FLOPs of a forward pass, counted from the
model config, against the memory bandwidth and matmul throughput measured on the machine itself.

A forward pass of ``T`` new tokens per row after ``P`` cached ones (decoding: T = 1) must at least
read every weight it multiplies by and every cached key and value it attends to, and do the
multiply-adds of its matmuls. Its time cannot be below the larger of bytes / bandwidth and
FLOPs / throughput (the roofline); ``share`` is that bound over the time measured.

What is counted, per pass of B rows, with C = n_embd, L = n_layer, V = padded vocabulary:
- bytes: the weights of the blocks, the final norm and the head (V x C, tied or not), in their
  dtype; the position embedding is a lookup of T rows, not counted; the keys and values of the P + T
  positions every layer attends to, 2 x L x B x (P + T) x C elements of the cache's dtype.
- FLOPs: 2 per multiply-add of the matmuls: 12 C^2 per token per layer (queries/keys/values 3 C^2,
  output projection C^2, MLP 8 C^2), the head 2 C V for the one position sampled from, and attention
  4 C per query-key pair per layer (scores and the weighted sum of values; causal within the pass).
  Norms, GELU, softmax and the sampling are elementwise and left out (under 1% at this shape).
Reading the activations is left out too: they are B x C numbers per layer, kilobytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gpt.config import ModelConfig


@dataclass
class Cost:
    """The bytes that must be read and the FLOPs that must be done, summed over forward passes."""

    bytes: float = 0.0
    flops: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bytes + other.bytes, self.flops + other.flops)


def weight_count(cfg: ModelConfig) -> int:
    """Parameters a forward pass multiplies by: the blocks, the final norm, the head (not wpe)."""
    C, V = cfg.n_embd, cfg.padded_vocab_size
    norm = 2 * C if cfg.norm == "layernorm" and cfg.bias else C  # a scale, and a shift for LayerNorm with biases
    biases = 9 * C if cfg.bias else 0  # qkv 3C, attention proj C, fc 4C, MLP proj C
    per_layer = 12 * C * C + biases + 2 * norm
    return cfg.n_layer * per_layer + norm + V * C


def pass_cost(cfg: ModelConfig, rows: int, past: int, new: int, element_size: int, cached: bool = True) -> Cost:
    """The cost of one forward pass of ``rows`` rows, ``new`` tokens each after ``past`` cached ones,
    logits for the last position only. ``cached``: the pass reads its keys and values back from a
    cache (without one, they are computed within the pass and never leave the activations)."""
    C, L = cfg.n_embd, cfg.n_layer
    pairs = new * past + new * (new + 1) // 2  # query-key pairs: every new token sees the past and itself
    flops = 2 * rows * new * L * 12 * C * C + 2 * rows * C * cfg.padded_vocab_size + 4 * rows * L * C * pairs
    kv = 2 * L * rows * (past + new) * C if cached else 0
    return Cost(bytes=(weight_count(cfg) + kv) * element_size, flops=flops)


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls (after one untimed): the least disturbed by other work."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def memory_bandwidth(mib: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of ``repeats`` sums over a float32 buffer of ``mib`` MiB,
    far bigger than the caches of a CPU, so every byte comes from memory."""
    buffer = torch.ones(mib * 2**20 // 4)
    return buffer.numel() * 4 / best_seconds(lambda: buffer.sum(), repeats)


def matmul_throughput(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of x @ w.T for x (m, k) and w (n, k) in ``dtype`` (``F.linear``, as ``nn.Linear`` calls
    it), the best of ``repeats`` timed batches of about 1 GFLOP each."""
    x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
    calls = max(1, int(1e9 // (2 * m * k * n)))

    @torch.inference_mode()
    def batch():
        for _ in range(calls):
            F.linear(x, w)

    return 2 * m * k * n * calls / best_seconds(batch, repeats)


def decode_matmul_seconds(cfg: ModelConfig, rows: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """The time of one decode step's matrix products alone, best of ``repeats``: F.linear of (rows, C)
    activations by every weight matrix of the blocks and by the head, each its own tensor of the
    model's shape, as decoding reads them (from memory, not from a cache the previous call warmed).
    Everything else a decode step does (attention over the cache, norms, sampling) comes on top."""
    C = cfg.n_embd
    shapes = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)] * cfg.n_layer + [(cfg.padded_vocab_size, C)]
    weights = [torch.randn(n, k).to(dtype) for n, k in shapes]
    inputs = {k: torch.randn(rows, k).to(dtype) for k in (C, 4 * C)}

    @torch.inference_mode()
    def step():
        for w in weights:
            F.linear(inputs[w.size(1)], w)

    return best_seconds(step, repeats)


def limit_seconds(cost: Cost, bandwidth: float, throughput: float) -> float:
    """The roofline: no run can do ``cost`` faster than the larger of its memory and compute times."""
    return max(cost.bytes / bandwidth, cost.flops / throughput)
