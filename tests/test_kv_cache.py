"""The key/value cache: greedy decoding through it equals the uncached forward in the dtype used."""

import pytest
import torch

from gpt.config import ModelConfig
from gpt.generate import generate_tokens
from gpt.model import GPT

from conftest import uncached_greedy

BLOCK = 24
VOCAB = 20


def sharp_model(dtype: torch.dtype) -> GPT:
    """A random GPT with weights large enough that its greedy choice depends on the context."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=VOCAB)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cached_greedy_equals_the_uncached_forward_in_the_dtype_used(dtype):
    model = sharp_model(dtype)
    idx = torch.randint(0, VOCAB, (4, 3), generator=torch.Generator().manual_seed(1))
    n = BLOCK - 3  # inside the context: every step after the prompt is one cached step
    cached = torch.stack(list(generate_tokens(model, idx, n, temperature=0)), dim=1)
    assert torch.equal(cached, uncached_greedy(model, idx, n))
    assert len(cached.unique()) > 5  # the choices depend on the context, so the check has teeth
