"""Scoring continuations by log-likelihood (gpt.scoring): by hand, with long contexts, in pieces."""

from __future__ import annotations

import math

import pytest

from gpt.hellaswag import Item, evaluate_hellaswag
from gpt.scoring import score_pairs

from conftest import NEXT, hand_set_bigram


def by_hand(text: str) -> float:
    """log-likelihood of text[1:] after text[0] under NEXT."""
    order = " ab"
    return sum(math.log(NEXT[a][order.index(b)]) for a, b in zip(text, text[1:], strict=False))


def test_scores_of_a_hand_set_model_are_computed_by_hand():
    model, tokenizer = hand_set_bigram()
    endings = ["b", "ab", "bb", "a b"]
    # summed: " b" is likeliest (acc picks 0); per character: " a b" (acc_norm picks 3)
    summed = [by_hand("a " + e) for e in endings]
    assert max(range(4), key=summed.__getitem__) == 0
    assert max(range(4), key=lambda i: summed[i] / len(endings[i])) == 3
    pairs = [(tokenizer.encode("a"), tokenizer.encode(" " + e)) for e in [*endings, "a"]]
    scores = score_pairs(model, pairs, block_size=8, vocab_size=3, batch_size=3, device="cpu")
    assert [s.logprob for s in scores] == pytest.approx([*summed, by_hand("a a")], abs=1e-6)
    assert [s.tokens for s in scores] == [2, 3, 3, 4, 2]
    assert [s.greedy for s in scores] == [False] * 4 + [True]  # after 'a' the likeliest is ' ', after ' ' 'a'

    items = [Item("a", endings, 3), Item("a", endings, 0), Item("a", endings, 3)]
    result = evaluate_hellaswag(model, tokenizer, items, block_size=8, vocab_size=3, batch_size=2)
    assert (result.acc, result.acc_norm, result.items) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 3)


def test_a_long_context_keeps_its_last_tokens():
    model, tokenizer = hand_set_bigram()
    long_context = tokenizer.encode("ab" * 20)  # longer than block_size 8: only the last tokens are read
    pair = (long_context, tokenizer.encode(" a"))
    short = (tokenizer.encode("b"), tokenizer.encode(" a"))
    (a,), (b,) = (score_pairs(model, [p], 8, 3, 1, "cpu") for p in (pair, short))
    assert a.logprob == pytest.approx(b.logprob) == pytest.approx(by_hand("b a"))


def test_a_continuation_longer_than_the_context_is_scored_in_pieces():
    model, tokenizer = hand_set_bigram()
    text = "a ab bba b"  # 9 characters to score after 'a', with a context of 2: five windows
    (score,) = score_pairs(model, [(tokenizer.encode("a"), tokenizer.encode(text[1:]))], 2, 3, 4, "cpu")
    assert score.tokens == 9 and score.logprob == pytest.approx(by_hand(text))  # every character, once
