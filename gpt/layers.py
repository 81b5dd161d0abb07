"""Small parameter-free pieces of the GPT (``gpt.model``): rotary position embeddings and the logit soft-cap."""

from __future__ import annotations

import torch


def rope_rotation(head_size: int, base: float, start: int, T: int, device: torch.device) -> torch.Tensor:
    """Rotary position embedding (RoPE): the cosines and sines of the angles position * theta_i for
    positions start .. start+T-1, (T, 1, hs/2, 2) float32, broadcast over heads.

    Channels (2i, 2i+1) of a query or key are a 2-D point rotated by its angle (``apply_rope``), so
    that q . k depends on how far apart two tokens are, not on where they are. Computed once per
    forward pass from the config (a few hundred numbers): no buffer that model.to(torch.bfloat16)
    could round. Real cos/sin rather than complex numbers, which torch.compile cannot fuse.
    """
    theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32, device=device) / head_size)  # (hs/2,)
    positions = torch.arange(start, start + T, dtype=torch.float32, device=device)  # (T,)
    angles = torch.outer(positions, theta)[:, None, :]  # (T, 1, hs/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)  # (T, 1, hs/2, 2)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, hs), H vectors per position, rotated by ``rope_rotation``'s (T, 1, hs/2, 2) -> same shape.

    In float32 whatever x's dtype. Eagerly, each channel pair (a, b) is the complex number a + ib
    times cos + i sin: one kernel forward and one backward, a third of the time of the pairwise form
    on a CPU. Under torch.compile, which cannot fuse complex numbers, and on devices other than CPUs
    and CUDA GPUs (whose complex support varies), the same rotation written out in real numbers
    (``rotate_pairs``). The two differ in rounding only (tests/test_layers.py).
    """
    if torch.compiler.is_compiling() or x.device.type not in ("cpu", "cuda"):
        return rotate_pairs(x, rotation)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, H, hs/2) complex
    return torch.view_as_real(pairs * torch.view_as_complex(rotation)).flatten(-2).to(x.dtype)  # (B, T, H, hs)


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` in real numbers: channels (2i, 2i+1) = (a, b) become (a cos - b sin, a sin + b cos)."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # channels 2i and 2i+1: (B, T, H, hs/2) each
    cos, sin = rotation.unbind(-1)  # (T, 1, hs/2) each
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, T, H, hs/2, 2)
    return rotated.flatten(-2).to(x.dtype)  # (B, T, H, hs)


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap): logits squashed smoothly into (-cap, cap), near-identity for small ones
    (keeps the head from growing over-confident early; modded-nanogpt, gemma 2). cap 0: unchanged."""
    return cap * torch.tanh(logits / cap) if cap > 0 else logits
