"""The GPT of "Let's build GPT: from scratch", as a plain ``nn.Module``.

Read top to bottom: attention, MLP, block, the GPT itself, then the lecture's bigram baseline.
Shapes in comments use B = batch, T = sequence length, C = n_embd, nh = heads, hs = C // nh,
V = vocabulary size, P = tokens already in the key/value cache.

Nothing here knows about devices, dtypes, processes or optimizers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from gpt.config import ModelConfig


class KVCache:
    """Keys and values of the tokens seen so far, one pair of tensors per layer, for fast decoding.

    Storage is allocated once for ``max_len`` positions; ``pos`` counts the positions filled.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.pos = 0
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, nh, T, hs) keys/values at ``pos``; return all of them, (B, nh, P+T, hs)."""
        B, nh, T, hs = k.shape
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(B, nh, self.max_len, hs)
            self.values[layer] = v.new_empty(B, nh, self.max_len, hs)
        end = self.pos + T
        self.keys[layer][:, :, self.pos : end] = k
        self.values[layer][:, :, self.pos : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more positions as filled (called once per forward pass, after all layers)."""
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # queries, keys, values in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)  # (B, nh, P+T, hs)

        # softmax(q k^T / sqrt(hs)) v with a causal mask, by the fused kernel (flash attention on GPU).
        if past == 0:
            mask, causal = None, True  # plain causal attention over T positions
        elif T == 1:
            mask, causal = None, False  # one new token may see every cached position
        else:  # T new tokens after P cached ones: query i sees keys 0 .. P+i
            mask, causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past), False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side: (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU, project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"  # "tanh": GPT-2's original GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.gelu_approximate)))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: communication (attention) then computation (MLP)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # residual connections around both sub-layers
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    """Token + position embeddings, a stack of blocks, a final LayerNorm and a tied LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "set cfg.vocab_size from the tokenizer before building the model"
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)  # token embedding, also the output head
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        # The LM head reuses wte.weight (weight tying). It is one Parameter, not two tensors that share
        # storage, so no save/load path (safetensors, FSDP, accelerate) can untie or drop it.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                # GPT-2: scale residual projections so the residual stream's variance doesn't grow with depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for token ids idx (B, T), and the mean cross-entropy if targets are given.

        Targets equal to -1 are ignored. With a cache, idx holds only the new tokens; their positions
        continue after the cached ones.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.n_layer, self.cfg.block_size)


class BigramLanguageModel(nn.Module):
    """The lecture's baseline: the next token's logits are read from a table row of the current token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)  # (V, V)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        logits = self.table(idx)  # (B, T, V)
        if cache is not None:  # nothing to remember: the next token depends on the current one only
            cache.advance(T)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
        return logits, loss

    def new_cache(self) -> KVCache:
        return KVCache(0, self.cfg.block_size)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by cfg.kind."""
    return GPT(cfg) if cfg.kind == "gpt" else BigramLanguageModel(cfg)


def num_params(model: nn.Module, non_embedding: bool = True) -> int:
    """Parameter count; by default without position embeddings (the token embedding is the head, so it counts)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding and isinstance(model, GPT):
        n -= model.wpe.weight.numel()
    return n
