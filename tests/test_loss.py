"""The training loss: computed inside the forward from float32 logits, in chunks for large vocabularies,
with no logits returned and no (B, T, V) tensor ever whole."""

import pytest
import torch
from accelerate.utils import convert_outputs_to_fp32
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gpt.config import ModelConfig
from gpt.model import GPT

from conftest import tiny

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
