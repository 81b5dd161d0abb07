"""gpt/layers.py: the rotary rotation's arithmetic and the logit soft-cap (what rotary positions do to a
model is tested in test_model.py)."""

import pytest
import torch

import gpt.layers
from gpt.layers import apply_rope, rope_rotation, rotate_pairs, softcap


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_and_compiled_rope_forms_rotate_alike(dtype):
    """apply_rope's complex form (eager) and rotate_pairs (what torch.compile traces) both rotate each
    channel pair (a, b) to (a cos - b sin, a sin + b cos); the pairwise one bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(2, 40, 3, 16).to(dtype)  # (B, T, H, hs)
    start, hs = 7, 16
    theta = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    angles = torch.outer(torch.arange(start, start + 40, dtype=torch.float32), theta)[:, None, :]
    cos, sin = angles.cos(), angles.sin()
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    expected = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(dtype)
    rotation = rope_rotation(hs, 10000.0, start, 40, x.device)
    assert torch.equal(rotate_pairs(x, rotation), expected)
    got = apply_rope(x, rotation)
    assert got.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # a bfloat16 result may round the other way
    torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance)


def test_compiled_rope_and_other_devices_take_the_real_form(monkeypatch):
    calls = []
    monkeypatch.setattr(gpt.layers, "rotate_pairs", lambda x, rotation: calls.append(x) or x)
    x = torch.randn(1, 4, 2, 8)
    rotation = rope_rotation(8, 10000.0, 0, 4, x.device)
    assert apply_rope(x, rotation) is not x and not calls  # eager on a CPU: the complex form
    on_meta = x.to("meta")  # a device other than a CPU or a CUDA GPU
    assert apply_rope(on_meta, rotation.to("meta")) is on_meta and len(calls) == 1
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert apply_rope(x, rotation) is x and len(calls) == 2


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
