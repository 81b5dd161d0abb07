"""gpt/layers.py: the logit soft-cap (the rotary helpers are tested with the features in test_features.py)."""

import torch

from gpt.layers import softcap


def test_softcap_is_the_tanh_formula_and_bounds_the_logits():
    logits = torch.linspace(-1000.0, 1000.0, 2001)
    capped = softcap(logits, 30.0)
    torch.testing.assert_close(capped, 30.0 * torch.tanh(logits / 30.0))
    assert capped.abs().max() <= 30.0
    assert capped.abs().max() > 29.9  # large logits go right up to the cap
    small = torch.tensor([-0.3, 0.0, 0.5])
    torch.testing.assert_close(softcap(small, 30.0), small, atol=1e-4, rtol=0)  # near the identity for small ones


def test_softcap_of_zero_leaves_the_logits_alone():
    logits = torch.randn(4, 65) * 100
    assert softcap(logits, 0.0) is logits
