"""The roofline of decoding: bytes and FLOPs counted from the config, the machine's limits."""

import pytest
import torch

from gpt.config import ModelConfig
from gpt.model import GPT
from gpt.roofline import (
    Cost,
    decode_matmul_seconds,
    limit_seconds,
    matmul_throughput,
    memory_bandwidth,
    pass_cost,
    weight_count,
)


@pytest.mark.parametrize(
    "switches", [{}, {"bias": False}, {"norm": "rmsnorm", "bias": False}, {"tie_head": False}, {"position": "rope"}]
)
def test_weights_counted_are_those_the_forward_multiplies_by(switches):
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, **switches)
    model = GPT(cfg)
    lookups = (model.wpe.weight.numel() if model.wpe is not None else 0) + (
        model.wte.weight.numel() if model.lm_head is not None else 0  # untied: wte is only looked up
    )
    assert weight_count(cfg) == sum(p.numel() for p in model.parameters()) - lookups


def test_a_decode_step_reads_the_weights_and_the_cache_and_does_the_matmuls():
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=64, vocab_size=11, pad_vocab_to=1)
    C, L, B, P = 16, 2, 3, 9
    step = pass_cost(cfg, rows=B, past=P, new=1, element_size=2)
    assert step.bytes == 2 * (weight_count(cfg) + 2 * L * B * (P + 1) * C)  # keys and values of P+1 positions
    assert step.flops == 2 * B * (L * 12 * C * C + C * 11) + 4 * B * L * C * (P + 1)
    prefill = pass_cost(cfg, rows=B, past=0, new=4, element_size=2, cached=False)
    assert prefill.bytes == 2 * weight_count(cfg)  # keys and values never leave the pass
    assert prefill.flops == 2 * B * (4 * L * 12 * C * C + C * 11) + 4 * B * L * C * (1 + 2 + 3 + 4)


def test_the_limit_is_the_slower_of_memory_and_compute():
    assert limit_seconds(Cost(bytes=10e9, flops=1e9), bandwidth=10e9, throughput=100e9) == 1.0
    assert limit_seconds(Cost(bytes=1e9, flops=100e9), bandwidth=10e9, throughput=50e9) == 2.0


def test_the_machine_measures_are_positive_rates():
    assert memory_bandwidth(mib=8, repeats=1) > 1e6  # bytes/s
    assert matmul_throughput(4, 32, 32, torch.float32, repeats=1) > 1e6  # FLOP/s


def test_decode_step_matmuls_multiply_by_every_weight_matrix_of_the_model(monkeypatch):
    """The timed products are the model's: one per Linear of the blocks and the head, in its shape, each a
    separate tensor (a shared one would sit in a CPU cache and flatter the kernels)."""
    import gpt.roofline

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, bias=False, tie_head=False)
    calls = []
    linear = gpt.roofline.F.linear
    monkeypatch.setattr(gpt.roofline.F, "linear", lambda x, w: calls.append((x.shape, w)) or linear(x, w))
    assert decode_matmul_seconds(cfg, rows=3, dtype=torch.float32, repeats=1) > 0
    step = calls[: len(calls) // 2]  # one untimed call, then one timed
    model = GPT(cfg)
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(tuple(w.shape) for _, w in step) == sorted(tuple(w.shape) for w in linears)
    assert all(x[0] == 3 for x, _ in step)
    assert len({w.data_ptr() for _, w in step}) == len(step)
