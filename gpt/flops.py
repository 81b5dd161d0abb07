"""Model FLOPs per token and model FLOPs utilisation (MFU), as in the PaLM paper and nanoGPT.

A training step costs 6 FLOPs per parameter per token (forward 2, backward 4) plus attention's
12 * n_layer * n_embd * block_size (the score and value matmuls, which have no parameters).
MFU is the achieved model FLOPs per second over the hardware's peak.
"""

from __future__ import annotations

import torch

from gpt.config import ModelConfig

PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}  # dense bf16, SXM parts


def flops_per_token(cfg: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N + 12 * n_layer * n_embd * block_size."""
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size if cfg.kind == "gpt" else 0
    return 6.0 * n_params + attention


def peak_tflops(device: torch.device, configured: float = 0.0) -> float | None:
    """The peak to measure MFU against: the configured one, else the GPU's from the table; None on CPU."""
    if configured > 0:
        return configured
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in PEAK_BF16_TFLOPS.items() if gpu in name), None)


def mfu(tokens_per_s: float, flops_per_tok: float, peak: float, processes: int) -> float:
    """Model FLOPs utilisation of the whole job: achieved FLOP/s over peak FLOP/s of every device."""
    return tokens_per_s * flops_per_tok / (peak * 1e12 * processes)
