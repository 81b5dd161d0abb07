"""The evaluation pass: coverage, bits per byte by hand, exact byte counts, one batch shape."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gpt.config import ModelConfig
from gpt.data import TokenStream, split_files, write_token_file
from gpt.evaluation import evaluate_split, loss_totals, token_byte_lengths
from gpt.model import GPT, BigramLanguageModel
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer


def token_stream(tmp_path, ids, tokenizer) -> TokenStream:
    return TokenStream([write_token_file(tmp_path / "val.tok", ids, tokenizer.vocab_size, tokenizer.identity)])


def test_bits_per_byte_of_a_hand_set_bigram_model_matches_the_hand_computation(tmp_path):
    tok = CharTokenizer("abé")  # ids: a 0, b 1, é 2 ('é' is 2 bytes in UTF-8)
    next_probs = torch.tensor(
        [
            [1 / 4, 1 / 2, 1 / 4],  # after a
            [1 / 2, 1 / 4, 1 / 4],  # after b
            [1 / 4, 1 / 2, 1 / 4],  # after é
        ]
    )
    model = BigramLanguageModel(ModelConfig(kind="bigram", vocab_size=3, block_size=2))
    with torch.no_grad():
        model.table.weight.copy_(next_probs.log())
    data = token_stream(tmp_path, tok.encode("abéaba"), tok)
    # predicted: b after a (1/2: 1 bit), é after b (1/4: 2 bits), a after é (1/4: 2 bits),
    # b after a (1 bit), a after b (1/2: 1 bit) -> 7 bits over the 6 bytes of "béaba"
    result = evaluate_split(model, data, token_byte_lengths(tok), block_size=2, batch_size=2)
    assert (result.tokens, result.bytes, result.windows) == (5, 6, 3)  # windows of 2, 2 and 1 predictions
    assert result.bits_per_byte == pytest.approx(7 / 6, rel=1e-6)
    assert result.loss == pytest.approx(7 * math.log(2) / 5, rel=1e-6)
    assert result.perplexity == pytest.approx(2 ** (7 / 5), rel=1e-6)


@pytest.mark.parametrize("block_size, batch_size", [(32, 4), (37, 3), (4001, 1)])
def test_every_token_is_predicted_once(tmp_path, shakespeare, block_size, batch_size):
    """A bigram model's loss doesn't depend on context, so the full pass must equal the plain mean over
    all consecutive pairs; a token skipped or counted twice would change it."""
    tok = CharTokenizer.from_text(shakespeare)
    ids = tok.encode(shakespeare[:4000])
    torch.manual_seed(0)
    model = BigramLanguageModel(ModelConfig(kind="bigram", vocab_size=tok.vocab_size, block_size=block_size))
    with torch.no_grad():
        model.table.weight.normal_(0.0, 2.0)
    pairs = torch.tensor(ids)
    expected = F.cross_entropy(model.table.weight[pairs[:-1]].double(), pairs[1:]).item()
    result = evaluate_split(model, token_stream(tmp_path, ids, tok), token_byte_lengths(tok), block_size, batch_size)
    assert result.tokens == len(ids) - 1 and result.bytes == len(shakespeare[1:4000].encode("utf-8"))
    assert result.loss == pytest.approx(expected, rel=1e-9)


def test_byte_lengths_are_exact_for_both_tokenizers():
    text = "Voilà — naïve café, 日本語 and 🙂!\n"
    char = CharTokenizer(text)
    assert token_byte_lengths(char)[char.encode(text)].sum().item() == len(text.encode("utf-8"))
    gpt2 = GPT2Tokenizer()
    ids = gpt2.encode(text)
    assert any("\ufffd" in gpt2.decode([i]) for i in ids)  # some tokens are parts of characters here
    lengths = token_byte_lengths(gpt2)
    assert lengths[ids].sum().item() == len(text.encode("utf-8"))
    assert lengths[ids + [gpt2.eot_id] + ids].sum().item() == 2 * len(text.encode("utf-8"))  # end-of-text: 0


class InputShapes:
    """The distinct input shapes a model's forward sees (a compiled model compiles once per shape)."""

    def __init__(self, model: torch.nn.Module):
        self.shapes: set[tuple[int, ...]] = set()
        model.register_forward_pre_hook(lambda module, args: self.shapes.add(tuple(args[0].shape)))


@pytest.mark.parametrize("windows, batch_size", [(7, 3), (2, 8)])  # a short last batch; fewer windows than a batch
def test_full_pass_runs_one_batch_shape(tmp_path, shakespeare, windows, batch_size):
    tok = CharTokenizer.from_text(shakespeare)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=tok.vocab_size))
    seen = InputShapes(model)
    data = token_stream(tmp_path, tok.encode(shakespeare[: windows * 8 + 1]), tok)
    result = evaluate_split(model, data, token_byte_lengths(tok), block_size=8, batch_size=batch_size)
    assert result.windows == windows
    assert seen.shapes == {(min(windows, batch_size), 8)}


def test_in_loop_evaluation_runs_one_batch_shape(data_root):
    from accelerate import Accelerator

    from gpt.evaluation import sampled_losses

    val = TokenStream(split_files(data_root / "tiny", "val"))
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=val.vocab_size))
    seen = InputShapes(model)
    from gpt.mixture import Mixture, Source

    mixture = Mixture([Source("tiny", 1.0, val, val)], 1337, block_size=8)
    losses = sampled_losses(model, mixture.eval_splits(), 1337, windows=10, block_size=8, batch_size=4,
                            accelerator=Accelerator(cpu=True))  # fmt: skip
    assert seen.shapes == {(4, 8)}  # 10 windows: 4 + 4 + 2 padded to 4
    assert set(losses) == {"train/loss", "val/loss"} and 3.5 < losses["val/loss"] < 5.5


def test_the_loss_core_ignores_padding_and_gives_the_models_mean_loss():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11, dropout=0.1))
    model.train()
    x, y = torch.randint(0, 11, (3, 8)), torch.randint(0, 11, (3, 8))
    pad_x, pad_y = torch.randint(0, 11, (2, 8)), torch.full((2, 8), -1)  # two ignored rows
    batches = [(x[:2], y[:2]), (torch.cat([x[2:], pad_x]), torch.cat([y[2:], pad_y]))]
    nll, tokens, _ = loss_totals(model, batches)
    assert tokens == 24  # the padding rows count no token
    model.eval()
    with torch.no_grad():
        mean = model(x, y)[1].item()
    assert abs(nll.item() / tokens.item() - mean) < 1e-5  # without dropout: evaluation runs in eval mode


def test_the_loss_core_counts_bytes_and_restores_training_mode():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=4, vocab_size=5)).train()
    y = torch.tensor([[0, 1, 2, -1]])
    _, tokens, n_bytes = loss_totals(model, [(torch.zeros(1, 4, dtype=torch.long), y)], byte_lengths=torch.arange(5))
    assert (tokens.item(), n_bytes.item()) == (3, 0 + 1 + 2)
    assert model.training
