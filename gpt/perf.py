"""Throughput arithmetic shared by the trainer's log and ``python -m gpt.bench``: model FLOPs per token,
the peak FLOP/s of known accelerators, model FLOPs utilisation (MFU) and peak memory.

FLOPs per token follow nanoGPT and the PaLM paper (appendix B): a forward and backward pass costs
6 FLOPs per weight that multiplies an activation (2 forward, 4 backward), plus the attention scores
and their weighted sum, 12 * n_layer * n_embd * block_size (6 * 2 matmuls of T x hs per head and
position, counted over the full context as those papers do). Embedding lookups, norms, activations
and the softmax are left out. MFU is the achieved model FLOP/s over the hardware's dense peak in the
precision the matmuls run in (bf16 under autocast, TF32 or fp32 without).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpt.config import ModelConfig

if TYPE_CHECKING:  # torch is imported where it is used: python -m gpt.plan runs without it
    import torch

# Dense (no structured sparsity) tensor-core peaks of one device, in TFLOP/s, from the vendors'
# datasheets, by the precision the matmuls run in: "bf16" (also fp16: the same peak on these parts),
# "tf32" (fp32 tensors, torch.set_float32_matmul_precision("high")) and "fp32" (full fp32, no tensor
# cores). Keyed by a regular expression searched in torch.cuda.get_device_name(); the first match wins,
# so the NVL and PCIe parts come before the SXM part whose name is the bare "H100"/"H200".
PEAK_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    (r"H100 NVL", "H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H100 PCIe", "H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H100", "H100 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # "NVIDIA H100 80GB HBM3"
    (r"H200 NVL", "H200 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"H200", "H200 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"H800 PCIe", "H800 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"H800", "H800 SXM", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    (r"A100|A800", "A100/A800", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"L40S", "L40S", {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (r"L40\b", "L40", {"bf16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"L4\b", "L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"A10\b", "A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),  # fp32 accumulation
)


@dataclass(frozen=True)
class Peak:
    """The peak MFU is measured against, and where it came from (said in the log)."""

    tflops: float
    label: str  # e.g. "H100 SXM dense bf16 peak"


def matmul_precision(mixed_precision: str, fp32_matmul_precision: str) -> str:
    """What the model's matmuls run in: 'bf16' under bf16/fp16 autocast (or with fp32 matmuls set to
    'medium'), 'tf32' with fp32 matmuls set to 'high', else 'fp32'."""
    if mixed_precision in ("bf16", "fp16") or fp32_matmul_precision == "medium":
        return "bf16"
    return "tf32" if fp32_matmul_precision == "high" else "fp32"


def lookup_peak(device_name: str, precision: str) -> Peak | None:
    """The dense peak of a device (by its torch name) in a precision ('bf16', 'tf32', 'fp32'); None if unknown."""
    for pattern, label, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return Peak(tflops[precision], f"{label} dense {precision} peak")
    return None


def peak_tflops(device: torch.device, precision: str) -> Peak | None:
    """The peak of one device of this kind in this precision, or None when not in the table (and on CPU)."""
    if device.type != "cuda":
        return None
    import torch

    return lookup_peak(torch.cuda.get_device_name(device), precision)


def training_peak(configured_tflops: float, device: torch.device, mixed_precision: str) -> Peak | None:
    """The peak a run's MFU is reported against: train.peak_tflops when set, else the table's figure for
    this device and the precision its matmuls run in (autocast, or the fp32 matmul setting in effect)."""
    if configured_tflops:
        return Peak(configured_tflops, "configured peak (train.peak_tflops)")
    import torch

    return peak_tflops(device, matmul_precision(mixed_precision, torch.get_float32_matmul_precision()))


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
        import torch

        return torch.cuda.max_memory_allocated(device)
    return peak_rss_bytes()


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a GPU (what train.micro_batch_size=auto fits into); None on other devices."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.get_device_properties(device).total_memory


def set_matmul_precision(setting: str, device: torch.device) -> None:
    """Apply train.matmul_precision for this process ('auto': TF32 on CUDA, full fp32 elsewhere)."""
    import torch

    torch.set_float32_matmul_precision(
        setting if setting != "auto" else ("high" if device.type == "cuda" else "highest")
    )
