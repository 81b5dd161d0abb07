"""Text generation on top of ``gpt.model``: key/value-cached decoding, temperature, top-k, top-p.

From a notebook::

    from gpt.generate import load, generate_text
    model, tokenizer, _ = load("out/default")
    print(generate_text(model, tokenizer, "ROMEO:", max_new_tokens=200)[0])
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.nn import functional as F

from gpt.checkpoint import load_exported
from gpt.errors import UserError
from gpt.tokenizer import Tokenizer


def load(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Model (eval mode), tokenizer and metadata from a run directory, checkpoint or model folder."""
    model, tokenizer, meta = load_exported(path)
    return model.to(device=device, dtype=dtype), tokenizer, meta


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p. logits: (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each token
        drop_sorted = mass_before >= top_p  # the smallest set that reaches top_p is kept
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_tokens(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), max_new_tokens times. prompt: (B, T0) ids.

    With learned absolute positions a sequence longer than the context can't simply slide: every
    position would shift. So once the context is full, the cache is re-filled from the last
    block_size tokens at each step; this gives exactly the tokens of decoding without a cache.
    """
    block_size = model.cfg.block_size
    idx = prompt[:, -block_size:]
    cache = model.new_cache() if use_cache else None
    logits, _ = model(idx, cache=cache)
    for _ in range(max_new_tokens):
        # [:vocab_size]: the head may have padding rows (model.pad_vocab_to); they are never sampled
        token = next_token(logits[:, -1, : model.cfg.vocab_size], temperature, top_k, top_p, generator)  # (B,)
        yield token
        idx = torch.cat([idx, token[:, None]], dim=1)[:, -block_size:]  # the context the next step sees
        if cache is None:
            logits, _ = model(idx)
        elif cache.pos < block_size:
            logits, _ = model(token[:, None], cache=cache)  # one new position
        else:
            cache.reset()  # context full: re-encode the cropped window
            logits, _ = model(idx, cache=cache)


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        if tokenizer.eot_id is None:
            raise UserError("the prompt is empty; give --start some text")
        ids = [tokenizer.eot_id]  # BPE models start a document after end-of-text
    return ids


def generate_text(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 200,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 1337,
) -> list[str]:
    """Generate ``num_samples`` continuations of ``prompt`` as one batch; returns prompt + continuation."""
    device = next(model.parameters()).device
    ids = encode_prompt(tokenizer, prompt)
    prompt_ids = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    new = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for token in generate_tokens(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, generator):
        for i, t in enumerate(token.tolist()):
            if not done[i]:
                if t == tokenizer.eot_id:
                    done[i] = True
                else:
                    new[i].append(t)
        if all(done):
            break
    return [prompt + tokenizer.decode(n) for n in new]
