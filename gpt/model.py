"""The GPT of "Let's build GPT: from scratch", as a plain ``nn.Module``.

Read top to bottom: attention, MLP, block, the loss, the GPT itself, then the lecture's bigram
baseline. Training calls ``model(idx, targets)`` and gets ``(None, loss)``: no logits, which at a
large vocabulary would be the biggest tensor of the step; inference calls ``model(idx)`` for them.
Shapes in comments use B = batch, T = sequence length, C = n_embd, nh = heads, hs = C // nh,
V = vocabulary size (padded, see ModelConfig.pad_vocab_to), P = tokens already in the key/value cache.

The defaults build the lecture's model. Optional switches in ModelConfig swap in newer parts, each
one independent of the others: rotary position embeddings (``position``), RMSNorm (``norm``),
QK-norm (``qk_norm``), squared-ReLU MLP (``mlp``), an untied head (``tie_head``), zero-initialised
output projections (``zero_init_proj``), no biases (``bias``), and from the GPT-2 speedrun
(modded-nanogpt): a soft-cap on the logits (``logit_softcap``), U-net skip connections from the
first half of the blocks to the second (``unet_skips``) and value embeddings (``value_embeds``).

Nothing here knows about devices, dtypes, processes or optimizers.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gpt.config import ModelConfig
from gpt.kv_cache import KVCache
from gpt.layers import apply_rope, rope_rotation, softcap


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """LayerNorm (subtract the mean, divide by the std, scale and shift) or RMSNorm (divide by the
    root mean square, scale): RMSNorm is cheaper and works as well in transformers."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=cfg.bias)


def value_table(cfg: ModelConfig, layer: int) -> int | None:
    """The value embedding block ``layer`` mixes into its attention values, or None: with k tables
    (ModelConfig.value_embeds), table i serves block i and block n_layer-k+i (modded-nanogpt)."""
    k = cfg.value_embeds
    if layer < k:
        return layer
    if layer >= cfg.n_layer - k:
        return layer - (cfg.n_layer - k)
    return None


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and the past."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qk_norm = cfg.qk_norm
        self.explicit = cfg.attention == "explicit"
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # queries, keys, values in one matmul
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # with a value embedding (GPT.value_table): values = value_mix[0] * v + value_mix[1] * the token's row
        self.value_mix = nn.Parameter(torch.full((2,), 0.5)) if value_table(cfg, layer) is not None else None

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        rotation: torch.Tensor | None = None,
        value_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C); rotation: the rotary positions of these T tokens (rope_rotation), or None;
        value_embed: (B, T, C), these tokens' rows of this block's value embedding, or None."""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.qkv(x).view(B, T, 3 * nh, hs)  # every head's query, key and value: (B, T, 3nh, hs)
        qk, v = qkv[:, :, : 2 * nh], qkv[:, :, 2 * nh :]  # queries and keys (B, T, 2nh, hs), values (B, T, nh, hs)
        if value_embed is not None:  # per token, so cached decoding stores the mixed values like any others
            v = (self.value_mix[0] * v + self.value_mix[1] * value_embed.view_as(v)).to(qkv.dtype)
        if self.qk_norm:
            qk = F.rms_norm(qk, (hs,))  # every query and key vector to unit RMS: bounded attention logits
        past = cache.pos if cache is not None else 0  # the new tokens sit at positions past .. past+T-1
        if rotation is not None:
            qk = apply_rope(qk, rotation)  # queries and keys in one go; keys enter the cache already rotated
        q, k = qk.split(nh, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs) each
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, nh, P+T, hs)

        # softmax(q k^T / sqrt(hs)) v with a causal mask, by torch's fused kernel (flash attention on GPU)
        # or written out as in the lecture (attention='explicit': faster on CPUs in bf16 for short contexts).
        if past == 0:
            mask, causal = None, True  # plain causal attention over T positions
        elif T == 1:
            mask, causal = None, False  # one new token may see every cached position
        else:  # T new tokens after P cached ones: query i sees keys 0 .. P+i
            mask, causal = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past), False
        dropout = self.dropout if self.training else 0.0
        if self.explicit:
            scale = 1.0 / math.sqrt(hs)
            if mask is None and not causal:
                att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, 1, P+1): nothing to mask
            else:  # scale * q k^T plus a bias of -inf where query i may not see a key (past the key P+i), in one op
                bias = torch.full((T, past + T), float("-inf"), dtype=q.dtype, device=x.device).triu(past + 1)
                att = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(-2, -1), alpha=scale)
                att = att.view(B, nh, T, -1)  # (B, nh, T, P+T)
            att = F.dropout(F.softmax(att, dim=-1), dropout, self.training)
            y = att.to(v.dtype) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side: (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU (or squared ReLU), project back."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.relu2 = cfg.mlp == "relu2"
        self.gelu_approximate = "tanh" if cfg.gelu == "tanh" else "none"  # "tanh": GPT-2's original GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)  # (B, T, 4C)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate=self.gelu_approximate)
        return self.dropout(self.proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm transformer block: communication (attention) then computation (MLP)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        rotation: torch.Tensor | None = None,
        value_embed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rotation, value_embed)  # residual connections around both sub-layers
        x = x + self.mlp(self.ln_2(x))
        return x


# The loss: the LM head and cross-entropy together, so that training never holds (B, T, V) logits.


def cross_entropy(
    x: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, reduction: str, cap: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of the head's predictions from hidden states x (N, C) for targets (N,), -1 ignored,
    summed ('sum') or per token ('none', 0 where ignored). The logits (N, V) are cast to float32 first:
    a softmax over V in bf16 loses digits. cap: ModelConfig.logit_softcap."""
    logits = softcap(F.linear(x, head).float(), cap)  # (N, V)
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)


def head_loss(
    x: torch.Tensor, head: torch.Tensor, targets: torch.Tensor, chunk: int, reduction: str, cap: float = 0.0
) -> torch.Tensor:
    """Cross-entropy of hidden states x (B, T, C) through the head (V, C) against targets (B, T).

    chunk > 0 takes that many tokens at a time, each under activation checkpointing: backward keeps
    only x and recomputes one chunk's logits at a time, so no (B, T, V) tensor ever exists (with
    GPT-2's vocabulary, 64 x 1024 tokens of fp32 logits would be 13 GB). The result is the same.
    reduction: 'mean' over targets != -1; 'sum' (evaluation adds sums over batches and processes);
    'none', per token (B, T), 0 where ignored (the full evaluation sums them in float64).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    per_piece = "none" if reduction == "none" else "sum"
    shape = targets.shape
    x, targets = x.flatten(0, 1), targets.flatten()  # (B*T, C), (B*T,)
    size = chunk if 0 < chunk < len(targets) else len(targets)  # tokens per piece
    pieces = []
    for xs, ts in zip(x.split(size), targets.split(size), strict=True):  # (size, C), (size,)
        if size < len(targets) and torch.is_grad_enabled():  # backward recomputes this piece's logits
            pieces.append(checkpoint(cross_entropy, xs, head, ts, per_piece, cap, use_reentrant=False))
        else:  # one piece, or evaluation: nothing kept for backward
            pieces.append(cross_entropy(xs, head, ts, per_piece, cap))
    if reduction == "none":
        return torch.cat(pieces).view(shape)  # (B, T)
    total = torch.stack(pieces).sum()
    if reduction == "sum":
        return total
    return total / (targets != -1).sum()  # the mean over predicted tokens (nan when there are none)


class GPT(nn.Module):
    """Token + position embeddings, a stack of blocks, a final norm and a tied (or separate) LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "set cfg.vocab_size from the tokenizer before building the model"
        self.cfg = cfg
        V = cfg.padded_vocab_size  # rows past vocab_size are padding: never a target, never sampled
        self.wte = nn.Embedding(V, cfg.n_embd)  # token embedding, also the output head when tied
        # learned absolute positions; with rotary embeddings, attention handles positions instead
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.position == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        # extra token embeddings mixed into attention values (ModelConfig.value_embeds; see value_table)
        self.value_embeds = nn.ModuleList(nn.Embedding(V, cfg.n_embd) for _ in range(cfg.value_embeds))
        # U-net: block i's output feeds block n_layer-1-i's input, times skip_weights[i] (ModelConfig.unet_skips)
        self.skip_weights = nn.Parameter(torch.ones(cfg.n_layer // 2)) if cfg.unet_skips else None
        self.ln_f = make_norm(cfg, cfg.n_embd)
        # Tied, the LM head reuses wte.weight. It is one Parameter, not two tensors that share storage,
        # so no save/load path (safetensors, FSDP, accelerate) can untie or drop it.
        self.lm_head = None if cfg.tie_head else nn.Linear(cfg.n_embd, V, bias=False)
        self.fp32_head = False  # the head and loss in fp32 outside autocast (gpt.cpu: where bf16 loses there)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                if cfg.zero_init_proj:  # every block starts as the identity; the first steps grow it
                    nn.init.zeros_(p)
                else:  # GPT-2: scale residual projections so the residual stream's variance doesn't grow with depth
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
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
        last_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token ids idx (B, T) -> (logits (B, T, V), None) without targets, (None, loss) with them.

        The loss is the cross-entropy over targets (B, T), -1 ignored, in float32: their mean, with
        reduction='sum' their sum, with 'none' each token's (B, T). Training gets no logits: the loss
        is computed from the hidden states in chunks (``head_loss``), never from a whole (B, T, V)
        tensor. With a cache, idx holds only the new tokens; their positions continue after the
        cached ones.
        last_only: logits (B, 1, V) of the last position alone, the one generation samples from.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        rolling = cache is not None and cache.rolling
        if start + T > self.cfg.block_size and not rolling:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))  # + (T, C), broadcast over B
        x = self.drop(x)
        rotation = None  # rotary positions: the same rotations for every layer, computed once
        if self.cfg.position == "rope":
            rotation = rope_rotation(self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_base, start, T, idx.device)
        value_rows = [table(idx) for table in self.value_embeds]  # (B, T, C) each
        skips = []  # the U-net's outputs of the first half of the blocks, the last one on top
        for i, block in enumerate(self.blocks):
            mirror = self.cfg.n_layer - 1 - i  # the first-half block whose output this one takes
            if self.skip_weights is not None and mirror < len(self.skip_weights):
                x = x + self.skip_weights[mirror] * skips.pop()
            table = value_table(self.cfg, i)
            x = block(x, cache, rotation, None if table is None else value_rows[table])  # (B, T, C)
            if self.skip_weights is not None and i < len(self.skip_weights):
                skips.append(x)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        x = self.ln_f(x)
        head = self.wte.weight if self.lm_head is None else self.lm_head.weight  # (V, C)
        cap = self.cfg.logit_softcap
        with torch.autocast(x.device.type, enabled=False) if self.fp32_head else nullcontext():
            x, head = (x.float(), head.float()) if self.fp32_head else (x, head)
            if targets is not None:
                return None, head_loss(x, head, targets, self.cfg.loss_chunk_tokens, reduction, cap)
            return softcap(F.linear(x, head), cap), None  # (B, T, V)

    def new_cache(self, rolling: bool = False) -> KVCache:
        """An empty key/value cache; ``rolling`` (rotary positions only) decodes on past block_size."""
        if rolling and self.cfg.position != "rope":
            raise ValueError("a rolling cache needs rotary positions (model.position=rope)")
        return KVCache(self.cfg.n_layer, self.cfg.block_size, rolling)


class BigramLanguageModel(nn.Module):
    """The lecture's baseline: the next token's logits are read from a table row of the current token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)  # (V, V)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        reduction: str = "mean",
        last_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """As GPT.forward: (logits, None) without targets, (None, loss) with them."""
        logits = self.table(idx[:, -1:] if last_only else idx)  # (B, T, V), or (B, 1, V)
        if cache is not None:  # nothing to remember: the next token depends on the current one only
            cache.advance(idx.size(1))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=reduction)
        return None, loss.view_as(targets) if reduction == "none" else loss

    def new_cache(self, rolling: bool = False) -> KVCache:
        return KVCache(0, self.cfg.block_size, rolling)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model named by cfg.kind."""
    return GPT(cfg) if cfg.kind == "gpt" else BigramLanguageModel(cfg)


def num_params(model: nn.Module, non_embedding: bool = True) -> int:
    """Parameter count; by default without the lookup tables: position embeddings, and the token
    embedding when it is not also the head (tied, it does the head's matmul, so it counts)."""
    n = sum(p.numel() for p in model.parameters())
    if non_embedding and isinstance(model, GPT):
        if model.wpe is not None:
            n -= model.wpe.weight.numel()
        if model.lm_head is not None:
            n -= model.wte.weight.numel()
        n -= sum(table.weight.numel() for table in model.value_embeds)  # lookups, like wpe
    return n
