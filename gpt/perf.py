"""Throughput arithmetic shared by the trainer's log and ``python -m gpt.bench``: model FLOPs per token,
the peak FLOP/s of known accelerators, model FLOPs utilisation (MFU) and peak memory.

FLOPs per token follow nanoGPT and the PaLM paper (appendix B): a forward and backward pass costs
6 FLOPs per weight that multiplies an activation (2 forward, 4 backward), plus the attention scores
and their weighted sum, 12 * n_layer * n_embd * block_size (6 * 2 matmuls of T x hs per head and
position, counted over the full context as those papers do). Embedding lookups, norms, activations
and the softmax are left out. MFU is the achieved model FLOP/s over the hardware's dense bf16 peak.
"""

from __future__ import annotations

import sys

import torch

from gpt.config import ModelConfig

# Dense bf16 tensor-core peak in TFLOP/s, from the vendors' datasheets, by a name fragment of
# torch.cuda.get_device_name(); the first fragment that matches wins.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("A100", 312.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (the name reads "H100 80GB HBM3")
    ("H200", 989.0),
)


def matmul_params(cfg: ModelConfig) -> int:
    """Weights that multiply activations for every token: the blocks' four matrices and the LM head.

    Biases, norm gains and embedding tables (lookups, not matmuls) are not counted.
    """
    C = cfg.n_embd
    if cfg.kind == "bigram":
        return 0  # a table lookup per token
    per_block = 3 * C * C + C * C + 2 * (4 * C * C)  # qkv, attention output, MLP in and out
    return cfg.n_layer * per_block + cfg.padded_vocab_size * C


def flops_per_token(cfg: ModelConfig) -> int:
    """Model FLOPs of one training token (forward and backward): 6N + 12 * n_layer * n_embd * block_size."""
    if cfg.kind == "bigram":
        return 0
    return 6 * matmul_params(cfg) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of one device of this kind, or None when it is not in the table (and on CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_TFLOPS_BF16:
        if fragment in name:
            return tflops
    return None


def mfu(flops_per_tok: int, tokens_per_s: float, num_devices: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak of all devices together; None without a peak."""
    if not peak or not flops_per_tok:
        return None
    return flops_per_tok * tokens_per_s / (peak * 1e12 * num_devices)


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory, or None where the platform does not report it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def set_matmul_precision(setting: str, device: torch.device) -> None:
    """Apply train.matmul_precision for this process ('auto': TF32 on CUDA, full fp32 elsewhere)."""
    torch.set_float32_matmul_precision(
        setting if setting != "auto" else ("high" if device.type == "cuda" else "highest")
    )
