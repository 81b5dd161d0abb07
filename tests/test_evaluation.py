"""gpt.evaluation's loss core, which the in-loop evaluation and the full pass share."""

import torch

from gpt.config import ModelConfig
from gpt.evaluation import loss_totals
from gpt.model import GPT


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
