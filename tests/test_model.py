import math

import pytest
import torch
from torch.nn import functional as F

from gpt.config import ModelConfig
from gpt.model import GPT, BigramLanguageModel, build_model, num_params


def tiny(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0)
    return ModelConfig(**(base | kw))


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
