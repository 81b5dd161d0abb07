"""The GPT architecture: causality, initialisation, the optional features (ModelConfig switches), the cache and
the loss; the defaults stay the lecture's."""

import math

import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import gpt.model
from gpt.config import ModelConfig
from gpt.generate import generate_tokens
from gpt.model import GPT, BigramLanguageModel, apply_rope, build_model, num_params, rope_rotation

from conftest import randomise, tiny


def test_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = torch.randint(0, 65, (2, 6))
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_zero_query_key_attention_averages_the_past_like_the_lectures_xbow():
    torch.manual_seed(0)
    cfg = tiny(n_head=1)
    attn = GPT(cfg).blocks[0].attn.eval()
    C = cfg.n_embd
    with torch.no_grad():
        attn.qkv.weight[: 2 * C].zero_()  # queries and keys are zero: every score is equal
        attn.qkv.bias[: 2 * C].zero_()
    x = torch.randn(3, 8, C)
    v = F.linear(x, attn.qkv.weight[2 * C :], attn.qkv.bias[2 * C :])  # (B, T, C)
    # the lecture's version 3: masked_fill(tril == 0, -inf) then softmax gives the running mean
    tril = torch.tril(torch.ones(8, 8))
    wei = torch.zeros(8, 8).masked_fill(tril == 0, float("-inf")).softmax(dim=-1)
    xbow = wei @ v
    expected = attn.proj(xbow)
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_initial_loss_is_close_to_log_vocab_size():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=4))
    idx, targets = torch.randint(0, 65, (2, 32, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(65)) < 0.05


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny())
    idx = torch.randint(0, 65, (4, 17))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_lm_head_is_the_token_embedding():
    model = GPT(tiny())
    names = [n for n, _ in model.named_parameters()]
    assert "wte.weight" in names and not any("head" in n for n in names)
    idx = torch.randint(0, 65, (1, 4))
    logits, _ = model(idx)
    with torch.no_grad():
        model.wte.weight[7] += torch.randn(32)  # changing the embedding changes the head's output for token 7
    logits2, _ = model(idx)
    assert not torch.allclose(logits[..., 7], logits2[..., 7])


def test_residual_projections_get_scaled_init():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=8, n_embd=256, n_head=4))
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_targets_of_minus_one_are_ignored():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (2, 16))
    y = torch.randint(0, 65, (2, 16))
    _, full = model(idx[:1], y[:1])
    y_masked = y.clone()
    y_masked[1] = -1
    _, masked = model(idx, y_masked)
    torch.testing.assert_close(full, masked)


def test_too_long_input_is_refused():
    model = GPT(tiny())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("prompt_len", [1, 5, 16])
def test_cached_forward_matches_full_forward(prompt_len):
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache()
    pieces = [model(idx[:, :prompt_len], cache=cache)[0]]
    for t in range(prompt_len, 16):
        pieces.append(model(idx[:, t : t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


def test_cache_accepts_a_chunk_after_cached_tokens():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = torch.randint(0, 65, (1, 12))
    full, _ = model(idx)
    cache = model.new_cache()
    model(idx[:, :5], cache=cache)
    chunk, _ = model(idx[:, 5:], cache=cache)  # 7 new tokens after 5 cached: needs the offset causal mask
    torch.testing.assert_close(chunk, full[:, 5:], rtol=1e-4, atol=1e-5)


def test_bigram_baseline():
    torch.manual_seed(0)
    model = build_model(tiny(kind="bigram"))
    assert isinstance(model, BigramLanguageModel)
    idx = torch.randint(0, 65, (4, 16))
    logits, _ = model(idx)
    assert logits.shape == (4, 16, 65)
    # the next token depends on the current one only
    torch.testing.assert_close(logits[0, 3], model.table.weight[idx[0, 3]])
    no_logits, loss = model(idx, idx)
    assert no_logits is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), idx.flatten()))


ALL_ON = dict(
    position="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_head=False, zero_init_proj=True, bias=False,
    attention="explicit",
)  # fmt: skip


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
    if not dropout:  # and the same gradients, which training takes through the fused scale-and-mask
        grads = []
        for model in (explicit, fused):
            model.zero_grad()
            model(idx, idx)[1].backward()
            grads.append({n: p.grad for n, p in model.named_parameters()})
        for name, grad in grads[0].items():
            torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    if dropout:  # in training, dropout acts on the attention weights: outputs vary from call to call
        explicit.train()
        assert not torch.allclose(explicit(idx)[0], explicit(idx)[0])


def test_rotary_model_in_bfloat16_matches_float32():
    # The rotation angles are computed at each call, so casting the model cannot round them.
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope"))).eval()
    idx = torch.randint(0, 65, (2, 16))
    want = model(idx)[0]
    got = model.to(torch.bfloat16)(idx)[0].float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


V = 512  # a vocabulary large enough that its logits dwarf everything else of this tiny model


def batch(B: int = 3, T: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx, targets = torch.randint(0, V, (2, B, T), generator=g)
    targets[0, :5] = -1  # some ignored targets, inside and across chunk boundaries
    targets[2, -3:] = -1
    return idx, targets


def loss_and_grads(chunk: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=1, n_embd=16, vocab_size=V, loss_chunk=chunk))
    _, loss = model(*batch())
    loss.backward()
    return loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 16, 1000])  # 48 tokens: a ragged last chunk, whole rows, one piece
def test_chunked_loss_and_gradients_equal_the_whole_ones(chunk):
    whole_loss, whole_grads = loss_and_grads(-1)
    loss, grads = loss_and_grads(chunk)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("chunk", [-1, 7])
def test_loss_is_the_float32_cross_entropy_of_the_logits_over_kept_targets(chunk):
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=1, n_embd=16, vocab_size=V, loss_chunk=chunk)).eval()
    idx, targets = batch()
    logits, none = model(idx)
    assert none is None
    kept = targets != -1
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
    no_logits, mean = model(idx, targets)
    _, total = model(idx, targets, reduction="sum")
    _, each = model(idx, targets, reduction="none")
    assert no_logits is None  # training gets the loss only
    assert mean.dtype == total.dtype == each.dtype == torch.float32
    torch.testing.assert_close(each, per_token.view_as(targets))  # 0 where ignored
    torch.testing.assert_close(total, per_token.sum())
    torch.testing.assert_close(mean, per_token.sum() / kept.sum())
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % V  # an input whose own prediction is ignored: only later ones see it
    _, first_five = model(idx[:, :5], targets[:, :5], reduction="sum")
    _, changed_first_five = model(changed[:, :5], targets[:, :5], reduction="sum")
    torch.testing.assert_close(first_five, changed_first_five)


def test_training_through_accelerates_autocast_returns_no_logits():
    model = GPT(tiny(n_layer=1, n_embd=16, vocab_size=V, loss_chunk=7))
    # what Accelerator(mixed_precision="bf16").prepare_model does to forward (an Accelerator here would fix
    # the precision for every later test of this process)
    model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward))
    no_logits, loss = model(*batch())
    assert no_logits is None and loss.dtype == torch.float32
    loss.backward()


def test_automatic_chunking_follows_the_vocabulary():
    assert ModelConfig(vocab_size=65).loss_chunk_tokens == 0  # one piece
    assert ModelConfig(vocab_size=50257, pad_vocab_to=64).loss_chunk_tokens > 0
    assert ModelConfig(vocab_size=50257, loss_chunk=-1).loss_chunk_tokens == 0
    assert ModelConfig(vocab_size=65, loss_chunk=32).loss_chunk_tokens == 32


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation makes (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def saved_bytes_and_largest_tensor(chunk: int, B: int, T: int) -> tuple[int, int]:
    """Bytes autograd keeps for backward (distinct storages), and the largest tensor of a training step."""
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=1, n_embd=16, vocab_size=V, loss_chunk=chunk, block_size=T))
    idx = torch.randint(0, V, (B, T))
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with LargestTensor() as mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, loss = model(idx, idx)
        loss.backward()
    return sum(storages.values()), mode.largest


def test_chunked_loss_never_makes_the_whole_logits_and_saves_far_less():
    B, T, chunk = 4, 64, 32
    whole_saved, whole_largest = saved_bytes_and_largest_tensor(-1, B, T)
    saved, largest = saved_bytes_and_largest_tensor(chunk, B, T)
    assert whole_largest == B * T * V  # the whole logits exist without chunks (what the check would catch)
    assert largest == chunk * V  # with chunks no more than one chunk's logits at a time
    logits_bytes = B * T * V * 4
    assert whole_saved - saved >= logits_bytes  # no (B, T, V) float32 log-probabilities kept for backward


# The switches from the GPT-2 speedrun (modded-nanogpt): logit soft-cap, U-net skips, value embeddings.


def test_logit_softcap_caps_inference_logits_and_the_training_loss_alike():
    torch.manual_seed(0)
    plain = GPT(tiny(bias=False))
    with torch.no_grad():
        plain.wte.weight.mul_(200)  # logits far beyond the cap
    capped = GPT(tiny(bias=False, logit_softcap=3.0))
    capped.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 65, (2, 16))
    raw, _ = plain(idx)
    logits, _ = capped(idx)
    torch.testing.assert_close(logits, 3.0 * torch.tanh(raw / 3.0))
    assert raw.abs().max() > 10 and logits.abs().max() <= 3.0
    expected = F.cross_entropy(logits.flatten(0, 1), idx.flatten())
    _, loss = capped(idx, idx)
    torch.testing.assert_close(loss, expected)
    capped.cfg.loss_chunk = 5  # the chunked, checkpointed loss caps the same way
    torch.testing.assert_close(capped(idx, idx)[1], expected)


def test_unet_skips_with_zero_weights_are_the_plain_model_and_otherwise_change_it():
    torch.manual_seed(0)
    plain = GPT(tiny(n_layer=4))
    skips = GPT(tiny(n_layer=4, unet_skips=True))
    assert skips.skip_weights.tolist() == [1.0, 1.0]  # block 0 -> block 3, block 1 -> block 2
    missing = skips.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["skip_weights"]
    idx = torch.randint(0, 65, (2, 16))
    assert not torch.allclose(skips(idx)[0], plain(idx)[0])
    with torch.no_grad():
        skips.skip_weights.zero_()
    torch.testing.assert_close(skips(idx)[0], plain(idx)[0])


def test_value_embeddings_serve_the_first_and_last_blocks_and_with_no_share_are_the_plain_model():
    from gpt.model import value_table

    assert [value_table(tiny(n_layer=4, value_embeds=2), i) for i in range(4)] == [0, 1, 0, 1]
    assert [value_table(tiny(n_layer=5, value_embeds=2), i) for i in range(5)] == [0, 1, None, 0, 1]
    assert [value_table(tiny(n_layer=4), i) for i in range(4)] == [None] * 4
    torch.manual_seed(0)
    plain = GPT(tiny(n_layer=3))
    ve = GPT(tiny(n_layer=3, value_embeds=1))
    missing = ve.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["blocks.0.attn.value_mix", "blocks.2.attn.value_mix", "value_embeds.0.weight"]
    assert num_params(ve) == num_params(plain) + 4  # the tables are lookups; the two mixes are counted
    idx = torch.randint(0, 65, (2, 16))
    assert not torch.allclose(ve(idx)[0], plain(idx)[0])
    with torch.no_grad():
        for i in (0, 2):
            ve.blocks[i].attn.value_mix.copy_(torch.tensor([1.0, 0.0]))  # all of v, none of the table
    torch.testing.assert_close(ve(idx)[0], plain(idx)[0])


def test_more_value_embeddings_than_half_the_blocks_is_one_clear_error():
    from gpt.config import Config, validate
    from gpt.errors import UserError

    cfg = Config()
    cfg.model.n_layer, cfg.model.value_embeds = 4, 3
    with pytest.raises(UserError, match="value_embeds=3 is more than n_layer // 2 = 2"):
        validate(cfg)
