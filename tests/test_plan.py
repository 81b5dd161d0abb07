"""The planner (python -m gpt.plan): the split of the batch, train.micro_batch_size=auto, the memory
model against what a CPU training step really saves, and the command line's exit codes and JSON."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from gpt import plan
from gpt.config import ModelConfig, TrainConfig, load_config
from gpt.errors import UserError
from gpt.model import GPT

from conftest import ROOT

# ----------------------------------------------------------------------------------------------
# The split and the automatic micro batch


def test_auto_takes_the_largest_divisor_that_fits():
    assert plan.choose_micro_batch(64, 8, None)[0] == 8  # no memory limit (CPU): one pass per process
    assert plan.choose_micro_batch(64, 1, lambda m: m <= 20)[0] == 16  # 20 would fit but does not divide 64
    assert plan.choose_micro_batch(48, 2, lambda m: m <= 5)[0] == 4
    assert plan.choose_micro_batch(512, 16, lambda m: m <= 32)[0] == 32
    micro, why = plan.choose_micro_batch(64, 2, lambda m: False)
    assert micro == 1 and "not even 1 fits" in why


def test_a_batch_that_cannot_be_split_over_the_processes_is_one_clear_error():
    with pytest.raises(UserError, match=r"train.batch_size \(30\) cannot be split evenly over 4 processes"):
        plan.choose_micro_batch(30, 4, None)


def test_an_explicit_micro_batch_keeps_the_strict_check():
    t = TrainConfig(batch_size=64, micro_batch_size=64)
    model = ModelConfig(vocab_size=65)
    with pytest.raises(UserError, match=r"not a multiple of train.micro_batch_size \(64\) x 8 processes = 512"):
        plan.resolve_micro_batch(t, model, 8, None, "bf16", False)
    t.micro_batch_size = 4
    assert plan.resolve_micro_batch(t, model, 8, None, "bf16", False)[0] == 4


def test_auto_on_a_gpu_uses_the_memory_estimate():
    model = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, pad_vocab_to=64)
    t = TrainConfig(batch_size=512)
    gib = plan.GIB
    small, why = plan.resolve_micro_batch(t, model, 1, 24 * gib, "bf16", False)
    large, _ = plan.resolve_micro_batch(t, model, 1, 80 * gib, "bf16", False)
    assert 1 <= small < large <= 512 and 512 % small == 0 and 512 % large == 0
    assert plan.estimate_memory(model, t, small, 1, True, False).total <= 24 * gib
    assert plan.estimate_memory(model, t, 2 * small, 1, True, False).total > 24 * gib  # the next divisor would not
    assert why.startswith(f"{small} (train.micro_batch_size=auto): the largest divisor of batch_size 512")
    fp32, _ = plan.resolve_micro_batch(t, model, 1, 24 * gib, "no", False)
    assert fp32 < small  # fp32 activations take twice the room


def test_precision_fsdp_and_checkpointing_change_the_estimate():
    model = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
    t = TrainConfig()
    base = plan.estimate_memory(model, t, 8, 8, True, False)
    assert plan.estimate_memory(model, t, 8, 8, False, False).blocks > 1.7 * base.blocks  # 64C vs 36C bytes a token
    sharded = plan.estimate_memory(model, t, 8, 8, True, True)
    assert sharded.optimizer * 8 == base.optimizer and sharded.gradients < base.gradients / 8
    t.activation_checkpointing = True
    checkpointed = plan.estimate_memory(model, t, 8, 8, True, False)
    assert checkpointed.blocks < base.blocks / 4 and checkpointed.logits_loss == base.logits_loss


def test_the_bigram_baseline_has_only_its_table_and_logits():
    cfg = ModelConfig(kind="bigram", vocab_size=65, block_size=64)
    memory = plan.estimate_memory(cfg, TrainConfig(), 32, 1, False, False)
    assert memory.blocks == 0 and memory.weights == 4 * 65 * 65
    assert memory.logits_loss == plan.logits_loss_bytes(32 * 64, 65, bits16=False)


def test_logits_loss_whole_or_in_chunks():
    assert plan.logits_loss_bytes(1024, 50304, bits16=True) == 1024 * 50304 * 12
    assert plan.logits_loss_bytes(1024, 50304, bits16=False) == 1024 * 50304 * 16
    assert plan.logits_loss_bytes(1024, 50304, bits16=True, chunk_rows=256) == 256 * 50304 * 12


@pytest.mark.parametrize(
    "features",
    [{}, {"bias": False, "tie_head": False}, {"position": "rope", "norm": "rmsnorm", "pad_vocab_to": 64}],
)
def test_param_count_matches_the_model(features):
    cfg = ModelConfig(n_layer=3, n_head=4, n_embd=64, block_size=32, vocab_size=65, **features)
    assert plan.param_count(cfg) == sum(p.numel() for p in GPT(cfg).parameters())


# ----------------------------------------------------------------------------------------------
# The activation estimate against a real training step


def made_from_a_parameter(t: torch.Tensor) -> bool:
    """Autocast's 16-bit copy of a weight (or its transpose): counted with the weights, not activations."""
    fn = t.grad_fn
    for _ in range(3):
        if fn is None:
            return False
        if hasattr(fn, "variable"):  # AccumulateGrad: a parameter
            return True
        if type(fn).__name__ not in ("ToCopyBackward0", "TBackward0"):
            return False
        fn = fn.next_functions[0][0]
    return False


def saved_activation_bytes(cfg: ModelConfig, batch: int, bits16: bool) -> Counter:
    """Bytes of the distinct storages a forward pass saves for backward, inside the blocks and outside."""
    torch.manual_seed(0)
    model = GPT(cfg)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    where, storages = ["outside"], {}
    for block in model.blocks:
        block.register_forward_pre_hook(lambda m, a: where.append("blocks"))
        block.register_forward_hook(lambda m, a, o: where.pop() and None)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and not made_from_a_parameter(t):
            storages.setdefault(storage.data_ptr(), (where[-1], storage.nbytes()))
        return t

    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bits16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        model(x, x)
    totals = Counter()
    for part, nbytes in storages.values():
        totals[part] += nbytes
    return totals


@pytest.mark.parametrize("bits16", [True, False], ids=["bf16", "fp32"])
@pytest.mark.parametrize(
    "shape, batch",
    [
        (dict(n_layer=2, n_head=4, n_embd=128, block_size=64), 4),  # the lecture's model
        (dict(n_layer=3, n_head=6, n_embd=192, block_size=128, vocab_size=500), 3),
        (dict(n_layer=2, n_head=4, n_embd=128, block_size=128, position="rope", norm="rmsnorm", qk_norm=True,
              mlp="relu2", bias=False, attention="explicit"), 2),  # the speedrun's parts
    ],
)  # fmt: skip
def test_activation_estimate_matches_what_a_training_step_saves(shape, batch, bits16):
    cfg = ModelConfig(**({"vocab_size": 65} | shape))
    measured = saved_activation_bytes(cfg, batch, bits16)
    tokens = batch * cfg.block_size
    blocks = cfg.n_layer * plan.block_activation_bytes(cfg, tokens, bits16, cuda=False)
    # outside the blocks: ids, final norm and head input, and the loss's fp32 log-probabilities (4 bytes a logit,
    # the part of logits_loss_bytes that lives until the backward pass)
    outside = plan.embedding_and_head_bytes(cfg, tokens, bits16) + 4 * tokens * cfg.padded_vocab_size
    assert blocks == pytest.approx(measured["blocks"], rel=0.15)
    assert blocks + outside == pytest.approx(measured["blocks"] + measured["outside"], rel=0.15)
    assert plan.logits_loss_bytes(tokens, cfg.padded_vocab_size, bits16) > 4 * tokens * cfg.padded_vocab_size


# ----------------------------------------------------------------------------------------------
# The command line


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpt.plan", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_plan_that_fits_exits_0_with_the_split_memory_and_json():
    r = run_plan("shakespeare_char", "--gpus", "8", "--gpu", "a100-40gb")
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout.strip().splitlines()[-1])
    assert record["world_size"] == 8 and record["micro_batch_size"] == 8 and record["accumulation_steps"] == 1
    assert record["tokens_per_step"] == 64 * 256 and record["fits"] is True
    assert 0 < record["memory_gib"] < record["device_memory_gib"] == plan.GPU_KINDS["a100-40gb"].memory_gib
    for part in ("weights", "gradients", "optimizer state", "activations", "logits/loss", "headroom", "ms/step"):
        assert part in r.stdout


def test_plan_that_does_not_fit_exits_2_with_one_line_of_what_to_change():
    r = run_plan("shakespeare_char", "model.n_layer=96", "train.micro_batch_size=64", "--gpu", "l4-24gb")
    assert r.returncode == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["fits"] is False
    (line,) = r.stderr.strip().splitlines()
    assert "does not fit one l4-24gb" in line and "train.micro_batch_size=32" in line
    assert "train.activation_checkpointing=true" in line
    # GPT-2 XL's weights and AdamW state alone overflow an L4: only sharding them over the 8 GPUs helps
    xl = ["model.n_layer=48", "model.n_head=25", "model.n_embd=1600", "train.micro_batch_size=1"]
    r = run_plan("gpt2_124m_fineweb", *xl, "--gpus", "8", "--gpu", "l4-24gb")
    assert r.returncode == 2 and r.stderr.strip().endswith("change one of: FSDP (--fsdp; launch with launch/fsdp.yaml)")


def test_nodes_multiply_the_world_and_bad_splits_are_one_line():
    r = run_plan("gpt2_124m_fineweb", "--gpus", "8", "--nodes", "2", "--fsdp")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["world_size"] == 16
    r = run_plan("shakespeare_char", "--gpus", "3")
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: train.batch_size (64) cannot be split evenly over 3 processes; choose a batch_size that is a "
        "multiple of 3"
    )


def test_planning_with_a_known_vocabulary_does_not_import_torch():
    code = (
        "import sys; from gpt import plan; "
        "assert plan.main(['model.vocab_size=65', '--gpus', '2']) == 0; assert 'torch' not in sys.modules"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_every_preset_plans_on_one_gpu():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config([path.stem])
        model, _ = plan.planning_model(cfg)
        built = plan.make_plan(cfg, model, 1, plan.GPU_KINDS["h100-80gb"], True, False)
        assert built.fits and built.micro * built.accum == cfg.train.batch_size, path.stem
