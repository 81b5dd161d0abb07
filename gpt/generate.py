"""Text generation on top of ``gpt.model``: key/value-cached decoding, temperature, top-k, top-p.

From a notebook::

    from gpt.generate import load, generate_text
    model, tokenizer, _ = load("out/default")               # CUDA in bf16 (fp16 before Ampere), else CPU
    print(generate_text(model, tokenizer, "ROMEO:", max_new_tokens=200)[0])

Past the context length. With learned absolute positions a window that slides by one token shifts
every position and invalidates every cached key and value. Three ways are offered:

- ``exact``: at every step past the context, re-fill the cache from the last ``block_size`` tokens.
  The tokens are those of decoding without a cache, and each step costs a full forward pass.
- ``fast``: when the window is full, drop its oldest half, re-fill the cache from the rest once,
  then decode token by token again until the window is full. One re-fill per half window; the
  model sees between block_size / 2 + 1 and block_size tokens of context, so the text differs
  from ``exact`` once the context length is passed (it is identical before).
- ``rolling``, for models with rotary positions (``model.position=rope``): an attention score
  depends only on how far apart two tokens are, so cached keys stay valid when the window slides.
  Each new token takes the slot of the oldest one and every step is one cheap cached step. Every
  layer attends to the last block_size tokens at their true distances; for a one-layer model that
  is exactly ``exact``, and for deeper ones the cached states of the window's tokens were computed
  when they could see further back (a sliding-window model), so the text may differ from ``exact``.

``auto`` (the default) is ``rolling`` for rotary models and ``exact`` for the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch.nn import functional as F

from gpt.errors import UserError
from gpt.export import load_exported
from gpt.tokenizer import Tokenizer

ContextMode = Literal["auto", "exact", "fast", "rolling"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> str:
    """'auto' is CUDA when available, else CPU; any other name is returned as given."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is visible; use cpu or auto")
    return name


def pick_dtype(name: str, device: str) -> torch.dtype:
    """'auto' is bfloat16 on a GPU that computes in it natively (Ampere or newer), float16 on an
    older GPU, float32 on CPU."""
    if name == "auto":
        return gpu_half_dtype(device) if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def gpu_half_dtype(device: str) -> torch.dtype:
    """bfloat16 where ``device`` (cuda or cuda:N) has bf16 tensor cores, else float16. Asked of that
    device, not the current one, and without emulation: older GPUs (V100, T4) emulate bf16 slowly."""
    with torch.cuda.device(torch.device(device)):  # the index None of plain "cuda" keeps the current device
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def load(path: str, device: str = "auto", dtype: str | torch.dtype = "auto"):
    """Model (eval mode), tokenizer and metadata from a run directory, checkpoint or model folder."""
    device = pick_device(device)
    if isinstance(dtype, str):
        dtype = pick_dtype(dtype, device)
    model, tokenizer, meta = load_exported(path)
    return model.to(device=device, dtype=dtype), tokenizer, meta


def check_options(
    max_new_tokens: int, num_samples: int, temperature: float, top_k: int, top_p: float, context_mode: str
) -> None:
    """One clear error for a decoding option out of range."""
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if num_samples < 1:
        raise UserError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")
    if context_mode not in get_args(ContextMode):
        raise UserError(f"context_mode must be one of {', '.join(get_args(ContextMode))}, got {context_mode!r}")


def check_memory(model: torch.nn.Module, prompt_tokens: int, max_new_tokens: int, num_samples: int) -> None:
    """Refuse a batch of samples whose key/value cache, logits and token lists would not fit in the
    free memory of the model's device (and of the host, which keeps the tokens), before allocating it."""
    import psutil

    cfg, weights = model.cfg, next(model.parameters())
    window = min(cfg.block_size, prompt_tokens + max_new_tokens)
    per_sample_device = (
        2 * cfg.n_layer * window * cfg.n_embd * weights.element_size()  # keys and values of every layer
        + window * cfg.padded_vocab_size * 4  # the logits of a full window, in float32
    )
    per_sample_host = 36 * max_new_tokens  # a Python list of ints: a pointer and an int object per token
    free_host = psutil.virtual_memory().available
    needs = [(num_samples * per_sample_host, free_host, "cpu")]
    if weights.device.type == "cuda":
        needs.append((num_samples * per_sample_device, torch.cuda.mem_get_info(weights.device)[0], "the GPU"))
    else:
        needs[0] = (needs[0][0] + num_samples * per_sample_device, free_host, "cpu")
    for need, free, where in needs:
        if need > free:
            raise UserError(
                f"{num_samples:,} samples of up to {prompt_tokens + max_new_tokens:,} tokens need about "
                f"{need / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB free on {where}; lower num_samples "
                "or max_new_tokens"
            )


def resolve_context_mode(model: torch.nn.Module, context_mode: str) -> str:
    """'auto' -> 'rolling' for rotary models, else 'exact'; 'rolling' is refused for the others."""
    rotary = model.cfg.kind == "gpt" and model.cfg.position == "rope"
    if context_mode == "auto":
        return "rolling" if rotary else "exact"
    if context_mode == "rolling" and not rotary:
        raise UserError(
            "context_mode=rolling needs a model with rotary positions (model.position=rope); this one has "
            "learned positions, which a sliding window shifts: use exact or fast"
        )
    return context_mode


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


@dataclass
class Sampling:
    """How one group of rows picks its tokens: the options of ``next_token`` and its random generator."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    generator: torch.Generator | None = None


class BatchDecoder:
    """Decode a batch of equally long prompts step by step, each group of rows with its own ``Sampling``.

    A group's rows are drawn together from its own generator, whatever else is in the batch: a group
    of n rows and seed s gets the tokens that decoding it alone (``sample_ids`` with num_samples=n
    and seed s) gets. ``keep`` lets finished groups leave the batch between steps.

    ``context`` is the window of tokens the model conditions on. When a new token would make it
    longer than block_size, 'exact' drops its oldest token (so this happens at every step from then
    on) and 'fast' drops its oldest half (once per half window); either way the cache is then
    re-filled from the window. 'rolling' never re-fills: the new token replaces the oldest in the
    cache (see the module doc). Without a cache every step runs the model on the whole window, which
    gives the tokens of 'exact'.
    """

    @torch.inference_mode()
    def __init__(
        self,
        model: torch.nn.Module,
        prompt: torch.Tensor,
        groups: list[tuple[int, Sampling]],
        use_cache: bool = True,
        context_mode: ContextMode = "auto",
    ):
        """prompt: (B, T0) ids; groups: (number of rows, sampling) in row order, the rows adding up to B."""
        if sum(rows for rows, _ in groups) != prompt.size(0):
            raise ValueError(f"the groups have {sum(r for r, _ in groups)} rows but the prompt has {prompt.size(0)}")
        self.model = model
        self.block_size = model.cfg.block_size
        context_mode = resolve_context_mode(model, context_mode)
        self.rolling = context_mode == "rolling"
        if self.rolling and not use_cache:
            raise UserError("context_mode=rolling works through the key/value cache; use exact without a cache")
        # on overflow, 'exact' drops the oldest token; 'fast' drops the oldest half of the window
        bs = self.block_size
        self.keep_len = min(bs, bs - bs // 2 + 1) if context_mode == "fast" else bs
        self.groups = list(groups)
        self.context = prompt[:, -bs:]  # (B, T)
        self.cache = model.new_cache(rolling=self.rolling) if use_cache else None
        self.logits = self._last_logits(model(self.context, cache=self.cache, last_only=True)[0])  # (B, V)
        self.pending: torch.Tensor | None = None  # the last tokens drawn, fed to the model on the next step

    def _last_logits(self, logits: torch.Tensor) -> torch.Tensor:
        # [:vocab_size]: the head may have padding rows (model.pad_vocab_to); they are never sampled
        return logits[:, -1, : self.model.cfg.vocab_size]

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """The next token of every row, (B,). The model runs only when a step is asked for, so no
        forward pass is spent on a token nobody will ask for."""
        if self.pending is not None:
            self._feed(self.pending)
        rows = self.logits.split([n for n, _ in self.groups])
        groups = zip(rows, self.groups, strict=True)
        drawn = [next_token(lg, s.temperature, s.top_k, s.top_p, s.generator) for lg, (_, s) in groups]
        self.pending = drawn[0] if len(drawn) == 1 else torch.cat(drawn)
        return self.pending

    def _feed(self, token: torch.Tensor) -> None:
        model, cache = self.model, self.cache
        self.context = torch.cat([self.context, token[:, None]], dim=1)
        cropped = self.context.size(1) > self.block_size
        if cropped:
            self.context = self.context[:, -self.keep_len :]
        if cache is None:
            logits, _ = model(self.context, last_only=True)  # the whole window, every step
        elif cropped and not self.rolling:
            cache.reset()  # positions shifted: re-encode the window
            logits, _ = model(self.context, cache=cache, last_only=True)
        else:
            logits, _ = model(token[:, None], cache=cache, last_only=True)  # one new position
        self.logits = self._last_logits(logits)

    @torch.inference_mode()
    def keep(self, groups: list[int]) -> None:
        """Go on with only these groups (indices into the current ones, in order); the others leave."""
        starts = [0]
        for n, _ in self.groups:
            starts.append(starts[-1] + n)
        rows = torch.tensor(
            [r for g in groups for r in range(starts[g], starts[g + 1])], dtype=torch.long, device=self.context.device
        )
        self.groups = [self.groups[g] for g in groups]
        self.context, self.logits = self.context[rows], self.logits[rows]
        self.pending = None if self.pending is None else self.pending[rows]
        if self.cache is not None:
            self.cache.keep_rows(rows)


def generate_tokens(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    context_mode: ContextMode = "auto",
) -> Iterator[torch.Tensor]:
    """Yield the next token of every sequence, (B,), max_new_tokens times. prompt: (B, T0) ids.

    One ``BatchDecoder`` group: every row is drawn with the same options from one generator.
    """
    decoder = BatchDecoder(
        model, prompt, [(prompt.size(0), Sampling(temperature, top_k, top_p, generator))], use_cache, context_mode
    )
    for _ in range(max_new_tokens):
        yield decoder.step()


def complete_prefix(text: str) -> str:
    """The text without trailing replacement characters: a BPE token can end inside a UTF-8 character,
    which the next token completes, so the end of a partial decode is held back until it is whole."""
    return text.rstrip("\ufffd")


def default_prompt(tokenizer: Tokenizer) -> str:
    """What a sample starts from when no prompt is given: a newline, as in the lecture; for a
    vocabulary without one, end-of-text (the empty prompt) or else the vocabulary's first token."""
    try:
        tokenizer.encode("\n")
        return "\n"
    except UserError:
        return "" if tokenizer.eot_id is not None else tokenizer.decode([0])


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        if tokenizer.eot_id is None:
            raise UserError(
                "the prompt is empty and this model's tokenizer has no end-of-text token to start from; give some text"
            )
        ids = [tokenizer.eot_id]  # BPE models start a document after end-of-text
    return ids


def sample_ids(
    model: torch.nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 1337,
    eot_id: int | None = None,
    context_mode: ContextMode = "auto",
    use_cache: bool = True,
) -> Iterator[list[list[int]]]:
    """Generate ``num_samples`` continuations of one prompt as one batch.

    Yields, after every step, the new tokens of each sample so far (the same lists, growing). A
    sample ends at end-of-text, which is not included; generation stops once every sample has ended.
    """
    check_options(max_new_tokens, num_samples, temperature, top_k, top_p, context_mode)
    check_memory(model, len(prompt_ids), max_new_tokens, num_samples)
    device = next(model.parameters()).device
    batch = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=device)  # (num_samples, T0)
    generator = torch.Generator(device=device).manual_seed(seed)
    samples: list[list[int]] = [[] for _ in range(num_samples)]
    ended = [False] * num_samples
    tokens = generate_tokens(
        model, batch, max_new_tokens, temperature, top_k, top_p, generator, use_cache, context_mode
    )
    for token in tokens:
        for i, t in enumerate(token.tolist()):
            ended[i] = ended[i] or t == eot_id
            if not ended[i]:
                samples[i].append(t)
        yield samples
        if all(ended):
            break


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
    context_mode: ContextMode = "auto",
) -> list[str]:
    """Generate ``num_samples`` continuations of ``prompt`` as one batch; returns prompt + continuation.

    Options as in ``sample.py --help``; a sample stops at end-of-text for tokenizers that have one.
    """
    samples: list[list[int]] = [[] for _ in range(num_samples)]
    for so_far in sample_ids(
        model, encode_prompt(tokenizer, prompt), max_new_tokens, num_samples, temperature, top_k, top_p, seed,
        tokenizer.eot_id, context_mode,
    ):  # fmt: skip
        samples = so_far
    return [prompt + tokenizer.decode(s) for s in samples]
