"""The optional model features (ModelConfig switches): each does what it says, defaults stay the lecture's."""

import math

import pytest
import torch
from torch.nn import functional as F

import gpt.model
from gpt.errors import UserError
from gpt.generate import generate_tokens
from gpt.model import GPT, apply_rope, num_params, rope_rotation

from conftest import tiny

ALL_ON = dict(
    position="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_head=False, zero_init_proj=True, bias=False,
    attention="explicit",
)  # fmt: skip


def randomise(model: GPT) -> GPT:
    """Non-trivial weights everywhere (zero-initialised projections would hide bugs)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_defaults_build_the_lectures_model():
    model = GPT(tiny(n_layer=1))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    block = {
        "ln_1.weight": (32,), "ln_1.bias": (32,), "attn.qkv.weight": (96, 32), "attn.qkv.bias": (96,),
        "attn.proj.weight": (32, 32), "attn.proj.bias": (32,), "ln_2.weight": (32,), "ln_2.bias": (32,),
        "mlp.fc.weight": (128, 32), "mlp.fc.bias": (128,), "mlp.proj.weight": (32, 128), "mlp.proj.bias": (32,),
    }  # fmt: skip
    expected = {"wte.weight": (65, 32), "wpe.weight": (16, 32), "ln_f.weight": (32,), "ln_f.bias": (32,)}
    expected |= {f"blocks.0.{k}": v for k, v in block.items()}
    assert shapes == expected
    assert isinstance(model.ln_f, torch.nn.LayerNorm)
    h = torch.randn(3, 32)
    torch.testing.assert_close(model.blocks[0].mlp.proj(F.gelu(model.blocks[0].mlp.fc(h))), model.blocks[0].mlp(h))


@pytest.mark.parametrize(
    "features",
    [
        {},
        {"position": "rope"},
        {"qk_norm": True},
        {"norm": "rmsnorm"},
        {"pad_vocab_to": 64},
        {"attention": "explicit"},
        ALL_ON,
    ],
    ids=["default", "rope", "qk_norm", "rmsnorm", "padded", "explicit", "all"],
)
def test_cached_decoding_matches_full_forward(features):
    torch.manual_seed(0)
    model = randomise(GPT(tiny(**features))).eval()
    idx = torch.randint(0, 65, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache()
    pieces = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:9], cache=cache)[0]]  # prompt, then a chunk
    for t in range(9, 16):
        pieces.append(model(idx[:, t : t + 1], cache=cache)[0])  # then one token at a time
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


def test_all_features_keep_attention_causal_and_train():
    torch.manual_seed(0)
    model = randomise(GPT(tiny(**ALL_ON))).eval()
    idx = torch.randint(0, 65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 65
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    model = GPT(tiny(**ALL_ON)).train()
    x = torch.randint(0, 65, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5


def test_rotary_scores_depend_only_on_relative_position():
    torch.manual_seed(0)

    def rope(x: torch.Tensor, start: int) -> torch.Tensor:
        return apply_rope(x, rope_rotation(8, 10000.0, start, x.size(1), x.device))

    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)  # (B, T, H, hs)

    def score(m: int, n: int) -> torch.Tensor:
        return (rope(q, m) * rope(k, n)).sum()

    torch.testing.assert_close(score(5, 2), score(20, 17))
    torch.testing.assert_close(score(3, 3), (q * k).sum())  # same position: the rotations cancel
    assert not torch.allclose(score(5, 2), score(5, 4))
    torch.testing.assert_close(rope(q, 7).norm(), q.norm())  # a rotation keeps lengths


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_rotary_form_equals_the_complex_one(dtype):
    """The cos/sin rotation (which torch.compile fuses) gives the complex-number form's result."""
    torch.manual_seed(0)
    x = torch.randn(2, 40, 3, 16).to(dtype)  # (B, T, H, hs)
    start, hs = 1000, 16
    theta = 10000.0 ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    angles = torch.outer(torch.arange(start, start + 40, dtype=torch.float32), theta)[:, None, :]
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # channels (2i, 2i+1) as a + ib
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(dtype)
    got = apply_rope(x, rope_rotation(hs, 10000.0, start, 40, x.device))
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_rope_replaces_the_position_table(monkeypatch):
    model = GPT(tiny(position="rope"))
    assert model.wpe is None and not any("wpe" in n for n in model.state_dict())
    assert not any("rotary" in n for n in model.state_dict())  # derived from the config, not saved
    # Order now reaches the model through attention alone: swapping two earlier tokens changes what the
    # last position predicts, which attention without any position information could not notice.
    model = randomise(GPT(tiny(position="rope", n_layer=1))).eval()  # one layer: no earlier layer mixes order in
    ordered, swapped = torch.tensor([[3, 7, 9]]), torch.tensor([[7, 3, 9]])
    assert not torch.allclose(model(ordered)[0][0, -1], model(swapped)[0][0, -1])
    monkeypatch.setattr(gpt.model, "apply_rope", lambda x, rotation: x)  # the same model without the rotations
    torch.testing.assert_close(model(ordered)[0][0, -1], model(swapped)[0][0, -1])


def test_rmsnorm_divides_by_the_root_mean_square():
    model = GPT(tiny(norm="rmsnorm"))
    norm = model.blocks[0].ln_1
    assert isinstance(norm, torch.nn.RMSNorm) and isinstance(model.ln_f, torch.nn.RMSNorm)
    x = 3.0 + 5.0 * torch.randn(4, 32)
    torch.testing.assert_close(norm(x), x / x.pow(2).mean(-1, keepdim=True).sqrt(), rtol=1e-4, atol=1e-5)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    for qk_norm in (True, False):
        attn = randomise(GPT(tiny(qk_norm=qk_norm))).blocks[0].attn.eval()
        before = attn(x)
        with torch.no_grad():
            attn.qkv.weight[:64] *= 10.0  # queries and keys 10x larger
            attn.qkv.bias[:64] *= 10.0
        assert torch.allclose(attn(x), before, atol=1e-5) == qk_norm


def test_relu2_mlp_squares_the_relu():
    mlp = GPT(tiny(mlp="relu2")).blocks[0].mlp
    h = torch.randn(3, 32)
    torch.testing.assert_close(mlp(h), mlp.proj(F.relu(mlp.fc(h)) ** 2))


def test_untied_head_is_a_separate_matrix():
    idx = torch.tensor([[1, 2, 3, 4]])
    for tie_head in (True, False):
        torch.manual_seed(0)
        model = randomise(GPT(tiny(tie_head=tie_head))).eval()
        logits, _ = model(idx)
        with torch.no_grad():
            model.wte.weight[9] += 1.0  # token 9 is not in the input: only a tied head sees the change
        changed, _ = model(idx)
        assert torch.equal(changed, logits) != tie_head
    assert (model.lm_head.weight.shape, model.lm_head.bias) == ((65, 32), None)
    tied = GPT(tiny())
    assert num_params(model) == num_params(tied)  # the head counts once, the lookup table not
    assert num_params(model, non_embedding=False) == num_params(tied, non_embedding=False) + 65 * 32


def test_zero_init_projections_start_every_block_as_the_identity():
    torch.manual_seed(0)
    model = GPT(tiny(zero_init_proj=True)).eval()
    for block in model.blocks:
        assert block.attn.proj.weight.abs().sum() == 0 and block.mlp.proj.weight.abs().sum() == 0
    idx = torch.randint(0, 65, (2, 16))
    logits, _ = model(idx)
    x = model.wte(idx) + model.wpe(torch.arange(16))  # the blocks add nothing yet
    torch.testing.assert_close(logits, F.linear(model.ln_f(x), model.wte.weight))
    # and the gradient still reaches them
    _, loss = model.train()(idx, idx)
    loss.backward()
    assert model.blocks[0].mlp.proj.weight.grad.abs().sum() > 0


def test_no_biases():
    model = GPT(tiny(bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


def test_padded_vocabulary_is_never_sampled():
    torch.manual_seed(0)
    model = GPT(tiny(pad_vocab_to=64)).eval()
    assert model.wte.weight.shape == (128, 32)
    logits, _ = model(torch.zeros(1, 3, dtype=torch.long))
    assert logits.shape == (1, 3, 128)
    with torch.no_grad():  # every final hidden state becomes all-ones, and the padded rows by far the most likely
        model.ln_f.weight.zero_()
        model.ln_f.bias.fill_(1.0)
        model.wte.weight[65:] = 1.0
    assert model(torch.zeros(1, 1, dtype=torch.long))[0][0, -1].argmax() >= 65
    for temperature in (0.0, 1.0):
        tokens = torch.stack(list(generate_tokens(model, torch.zeros(2, 1, dtype=torch.long), 20, temperature)))
        assert tokens.max() < 65


def test_initial_loss_near_log_vocab_with_all_features():
    torch.manual_seed(0)
    model = GPT(tiny(**ALL_ON, n_layer=4))
    idx, targets = torch.randint(0, 65, (2, 32, 16))
    assert abs(model(idx, targets)[1].item() - math.log(65)) < 0.1


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_explicit_attention_computes_what_the_fused_kernel_computes(dropout):
    torch.manual_seed(0)
    fused = randomise(GPT(tiny(position="rope", dropout=dropout))).eval()
    explicit = GPT(tiny(position="rope", dropout=dropout, attention="explicit")).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, 65, (2, 16))
    torch.testing.assert_close(explicit(idx)[0], fused(idx)[0], rtol=1e-5, atol=1e-5)
    cache = explicit.new_cache()
    explicit(idx[:, :6], cache=cache)
    torch.testing.assert_close(explicit(idx[:, 6:], cache=cache)[0], fused(idx)[0][:, 6:], rtol=1e-5, atol=1e-5)
    if dropout:  # in training, dropout acts on the attention weights: outputs vary from call to call
        explicit.train()
        assert not torch.allclose(explicit(idx)[0], explicit(idx)[0])


def greedy(model: GPT, prompt: torch.Tensor, n: int, **kw) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, prompt, n, temperature=0.0, **kw)), dim=1)  # (B, n)


def test_rolling_cache_is_exact_for_one_rotary_layer():
    # One layer: a cached key depends on its own token only, and rotary scores on distances only, so
    # the rolling cache gives what re-encoding the cropped window at every step gives.
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope", n_layer=1))).eval()
    prompt = torch.randint(0, 65, (3, 5))
    n = 40  # far past block_size 16
    rolling = greedy(model, prompt, n, context_mode="rolling")
    exact = greedy(model, prompt, n, context_mode="exact", use_cache=False)
    assert torch.equal(rolling, exact)


def test_rolling_cache_decodes_past_the_context_in_cached_steps():
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope", n_layer=2))).eval()
    prompt = torch.randint(0, 65, (2, 20))  # longer than the context: cropped to the last 16
    within = greedy(model, prompt[:, -10:], 6, context_mode="rolling")  # inside the context: as exact
    assert torch.equal(within, greedy(model, prompt[:, -10:], 6, context_mode="exact"))
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].size(1)), with_kwargs=True)
    tokens = greedy(model, prompt, 30)  # 'auto' is rolling for a rotary model
    assert tokens.shape == (2, 30) and tokens.max() < 65
    assert calls == [16] + [1] * 29  # the prompt once, then one position per step: the cache is never re-filled
    with pytest.raises(UserError, match="needs a model with rotary positions"):
        greedy(GPT(tiny()).eval(), prompt, 3, context_mode="rolling")


def test_rotary_model_in_bfloat16_matches_float32():
    # The rotation angles are computed at each call, so casting the model cannot round them.
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope"))).eval()
    idx = torch.randint(0, 65, (2, 16))
    want = model(idx)[0]
    got = model.to(torch.bfloat16)(idx)[0].float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()
