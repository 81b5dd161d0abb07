"""FLOPs and MFU arithmetic and the peak table."""

import pytest
import torch

from gpt import perf
from gpt.config import ModelConfig
from gpt.model import GPT

from conftest import tiny


@pytest.mark.parametrize("features", [{}, {"tie_head": False}, {"pad_vocab_to": 64}, {"bias": False, "n_layer": 3}])
def test_flops_count_every_weight_that_multiplies_an_activation(features):
    cfg = tiny(**features)
    model = GPT(cfg)
    head = model.wte.weight if model.lm_head is None else model.lm_head.weight
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2] + [head]
    assert perf.matmul_params(cfg) == sum(p.numel() for p in matrices)
    attention = 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    assert perf.flops_per_token(cfg) == 6 * sum(p.numel() for p in matrices) + attention


def test_gpt2_small_flops_match_nanogpts_estimate():
    # nanoGPT's estimate_mfu for GPT-2 124M (vocabulary 50304, context 1024): 6N + 12 * 12 * 768 * 1024 per
    # token, N = get_num_params() = 123,689,472 (no position table; tied head, biases and norm gains included).
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, pad_vocab_to=64)
    nanogpt = 6 * 123_689_472 + 12 * 12 * 768 * 1024
    assert 0 < (nanogpt - perf.flops_per_token(cfg)) / nanogpt < 0.001  # biases and norm gains are not matmuls


def test_mfu_against_the_peak_table():
    assert perf.mfu(1_000_000, 2e6, 1, 312.0) == pytest.approx(2e12 / 312e12)
    assert perf.mfu(1_000_000, 2e6, 8, 312.0) == pytest.approx(2e12 / (8 * 312e12))  # the peak of all GPUs
    assert perf.mfu(1_000_000, 2e6, 1, None) is None
    assert perf.peak_tflops(torch.device("cpu"), "bf16") is None
    assert perf.training_peak(0.0, torch.device("cpu"), "bf16") is None
    assert perf.training_peak(2.5, torch.device("cpu"), "no") == perf.Peak(2.5, "configured peak (train.peak_tflops)")
    assert perf.peak_memory_bytes(torch.device("cpu")) > 10 * 2**20


@pytest.mark.parametrize(
    "name, precision, tflops, label",
    [
        ("NVIDIA A100-SXM4-80GB", "bf16", 312.0, "A100/A800"),
        ("NVIDIA A100-SXM4-40GB", "tf32", 156.0, "A100/A800"),
        ("NVIDIA A800-SXM4-80GB", "bf16", 312.0, "A100/A800"),
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4, "H100 SXM"),
        ("NVIDIA H100 80GB HBM3", "fp32", 66.9, "H100 SXM"),
        ("NVIDIA H100 PCIe", "bf16", 756.0, "H100 PCIe"),
        ("NVIDIA H100 NVL", "bf16", 835.5, "H100 NVL"),  # not the SXM part's 989
        ("NVIDIA H200", "bf16", 989.4, "H200 SXM"),
        ("NVIDIA H200 NVL", "bf16", 835.5, "H200 NVL"),
        ("NVIDIA H800", "tf32", 494.7, "H800 SXM"),
        ("NVIDIA L4", "bf16", 121.0, "L4"),
        ("NVIDIA L40S", "bf16", 362.1, "L40S"),
        ("NVIDIA A10", "bf16", 125.0, "A10"),
        ("NVIDIA GeForce RTX 4090", "tf32", 82.6, "RTX 4090"),
    ],
)
def test_peak_is_looked_up_by_device_and_precision(name, precision, tflops, label):
    peak = perf.lookup_peak(name, precision)
    assert peak == perf.Peak(tflops, f"{label} dense {precision} peak")


def test_peak_precision_follows_autocast_then_the_fp32_matmul_setting():
    assert perf.matmul_precision("bf16", "highest") == "bf16"
    assert perf.matmul_precision("fp16", "high") == "bf16"
    assert perf.matmul_precision("no", "high") == "tf32"  # fp32 runs are measured against TF32, not bf16
    assert perf.matmul_precision("no", "highest") == "fp32"
    assert perf.matmul_precision("no", "medium") == "bf16"
    assert perf.lookup_peak("NVIDIA A10G", "bf16") is None  # unknown parts: no MFU rather than a wrong one
    assert perf.lookup_peak("Tesla V100-SXM2-16GB", "bf16") is None


def test_flops_of_the_bigram_are_zero():
    assert perf.flops_per_token(ModelConfig(kind="bigram", vocab_size=65)) == 0
    assert perf.mfu(0, 1e6, 1, 312.0) is None
