import torch

from gpt.config import ModelConfig
from gpt.flops import flops_per_token, mfu, peak_tflops


def test_gpt2_small_flops_per_token_match_the_usual_estimate():
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    n_params = 124_439_808  # GPT-2 124M with tied embeddings
    assert flops_per_token(cfg, n_params) == 6 * n_params + 12 * 12 * 768 * 1024  # about 0.86 GFLOP per token


def test_mfu_and_peaks():
    assert mfu(tokens_per_s=1000.0, flops_per_tok=1e9, peak=1.0, processes=2) == 0.5
    assert peak_tflops(torch.device("cpu")) is None  # no MFU on CPU unless a peak is given
    assert peak_tflops(torch.device("cpu"), configured=2.5) == 2.5
