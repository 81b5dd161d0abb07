"""Log-likelihood of a continuation given a context: the core of multiple-choice evaluation.

HellaSwag (``gpt.hellaswag``) and lm-evaluation-harness (``gpt.lm_eval_model``) both ask one
question of the model: how likely are these continuation tokens after those context tokens? This
module answers it for many (context, continuation) pairs at once, in batches of one forward pass.

How a pair is scored. The pair's tokens are context + continuation; the model reads all but the
last and predicts every next token, and the log-probabilities of the continuation's tokens are
summed. A pair longer than block_size + 1 tokens keeps its last block_size + 1 (the oldest context
tokens are dropped, as lm-evaluation-harness does); a continuation longer than block_size is read in
pieces of block_size tokens, each after as much of what precedes it as fits (so a character model
with a short context still scores a long ending, every character with the context it can see).
Log-probabilities are taken over the real vocabulary only (padding rows of the head,
``model.pad_vocab_to``, are never a token), in fp32.

Batches are padded on the right to a length rounded up to a multiple of 64 tokens (at most
block_size), and every batch has the same number of rows, so a compiled model sees few shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt.errors import UserError

LENGTH_MULTIPLE = 64  # batch lengths are rounded up to this, so a compiled model sees few shapes


@dataclass
class Score:
    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    greedy: bool  # every continuation token is the model's most likely next token
    tokens: int  # continuation tokens scored


def pair_windows(context: list[int], continuation: list[int], block_size: int) -> list[tuple[list[int], list[int]]]:
    """The model inputs that score one pair: (inputs, targets), the last len(targets) positions of
    inputs predicting the targets, which are continuation tokens. One window when the pair fits in
    block_size + 1 tokens; else the
    continuation is read in pieces of block_size tokens, each after as much context as fits."""
    if not continuation:
        raise UserError("a continuation to score has no tokens")
    if not context:
        raise UserError("a continuation to score needs at least one context token (e.g. end-of-text)")
    tokens = context + continuation
    windows = []
    for first in range(len(context), len(tokens), block_size):  # the continuation, block_size at a time
        end = min(first + block_size, len(tokens))  # predict tokens[first:end]
        start = max(0, end - 1 - block_size)
        windows.append((tokens[start : end - 1], tokens[first:end]))
    return windows


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    block_size: int,
    vocab_size: int,
    batch_size: int,
    device: torch.device | str,
) -> list[Score]:
    """Score every (context ids, continuation ids) pair, ``batch_size`` windows per forward pass.

    ``model(x)`` returns ``(logits, _)`` (a GPT or bigram model, plain or prepared by accelerate);
    ``vocab_size`` is the real vocabulary, without the head's padding rows.
    """
    windows, owners = [], []
    for index, (context, continuation) in enumerate(pairs):
        for window in pair_windows(context, continuation, block_size):
            windows.append(window)
            owners.append(index)
    logprob, misses = [0.0] * len(pairs), [0] * len(pairs)
    was_training = model.training
    model.eval()
    for lo in range(0, len(windows), batch_size):
        batch = windows[lo : lo + batch_size]
        length = min(block_size, -(-max(len(ids) for ids, _ in batch) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)
        x = torch.zeros(batch_size, length, dtype=torch.long)  # rows past the batch's windows: ignored padding
        y = torch.full((batch_size, length), -1, dtype=torch.long)  # -1: not scored
        for row, (ids, targets) in enumerate(batch):
            x[row, : len(ids)] = torch.tensor(ids)
            y[row, len(ids) - len(targets) : len(ids)] = torch.tensor(targets)
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)  # (B, L, V)
        scored = y != -1  # (B, L)
        logprobs = torch.log_softmax(logits[scored][:, :vocab_size].float(), dim=-1)  # (N, vocab)
        picked = y[scored]  # (N,)
        token_logprob = logprobs.gather(1, picked[:, None]).squeeze(1)  # (N,)
        missed = (logprobs.argmax(dim=-1) != picked).long()  # (N,)
        rows = scored.nonzero()[:, 0]  # the row of each scored position
        sums = torch.zeros(batch_size, dtype=torch.float64, device=device).index_add_(0, rows, token_logprob.double())
        row_misses = torch.zeros(batch_size, dtype=torch.long, device=device).index_add_(0, rows, missed)
        # sums and row_misses have a row per sequence of the batch, padding included
        for index, total, miss in zip(owners[lo : lo + batch_size], sums.tolist(), row_misses.tolist(), strict=False):
            logprob[index] += total
            misses[index] += miss
    model.train(was_training)
    return [Score(lp, miss == 0, len(c)) for lp, miss, (_, c) in zip(logprob, misses, pairs, strict=True)]
