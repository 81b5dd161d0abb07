"""The key/value cache of cached decoding: what ``gpt.model`` attention reads back instead of
recomputing the keys and values of the tokens already seen."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the tokens seen so far, one pair of tensors per layer, for fast decoding.

    Storage is allocated once for ``max_len`` positions; ``pos`` counts the tokens seen. A ``rolling``
    cache (for rotary positions only) keeps going once full: each new token overwrites the oldest
    one's slot, so attention always covers the last ``max_len`` tokens. That is only right where a
    score depends on how far apart two tokens are, not on their slots: rotary positions (the keys
    are stored already rotated by their own positions), one token at a time, no mask needed.
    """

    def __init__(self, n_layer: int, max_len: int, rolling: bool = False):
        self.max_len = max_len
        self.rolling = rolling
        self.pos = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, nh, T, hs) keys/values; return every cached one, (B, nh, P+T, hs) (P+T at most max_len)."""
        B, nh, T, hs = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.values[layer] = v.new_empty(B, nh, self.max_len, hs)
        end = self.pos + T
        if end <= self.max_len:
            self.keys[layer][:, :, self.pos : end] = k
            self.values[layer][:, :, self.pos : end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        if not self.rolling or T != 1:
            raise ValueError(
                f"the cache holds {self.max_len} positions; {end} is more (a rolling cache takes 1 at a time)"
            )
        slot = self.pos % self.max_len  # the oldest token's slot; the order of slots does not matter (see above)
        self.keys[layer][:, :, slot] = k[:, :, 0]
        self.values[layer][:, :, slot] = v[:, :, 0]
        return self.keys[layer], self.values[layer]

    def advance(self, n: int) -> None:
        """Mark n more positions as filled (called once per forward pass, after all layers)."""
        self.pos += n

    def reset(self) -> None:
        self.pos = 0

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (sequences that finished leave a batch being decoded)."""
        self.keys = [None if k is None else k[rows] for k in self.keys]
        self.values = [None if v is None else v[rows] for v in self.values]
