"""FSDP without processes: the plugin's units and precision, and resuming across FSDP and DDP."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.fsdp import SHARDED_MODEL_DIR, accelerate_plugin, check_checkpoint_fits, set_mixed_precision
from gpt.model import build_model


def test_the_fsdp_plugin_makes_one_unit_per_block():
    plugin = accelerate_plugin()
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    model = build_model(ModelConfig(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)  # what accelerate's FSDP2 prepare applies
    assert [name for name, module in model.named_modules() if policy(module)] == ["blocks.0", "blocks.1", "blocks.2"]


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp_computes_in_bf16_but_reduces_gradients_in_fp32(version, monkeypatch):
    from torch.distributed.fsdp import MixedPrecision, MixedPrecisionPolicy

    monkeypatch.setenv("FSDP_VERSION", str(version))  # what the launch config's fsdp_version becomes
    plugin = accelerate_plugin()
    plugin.set_mixed_precision("bf16")  # what accelerate does with the launch's mixed_precision
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    fsdp_run = SimpleNamespace(
        distributed_type=DistributedType.FSDP, mixed_precision="bf16", state=SimpleNamespace(fsdp_plugin=plugin)
    )
    set_mixed_precision(fsdp_run)
    if version == 2:
        want = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=None)
    else:
        want = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.bfloat16)
    assert plugin.mixed_precision_policy == want
    set_mixed_precision(SimpleNamespace(**vars(fsdp_run) | {"mixed_precision": "no"}))
    assert plugin.mixed_precision_policy is None  # fp32 throughout
    set_mixed_precision(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, state=None))  # not FSDP: no-op


def test_resuming_across_fsdp_and_ddp_is_refused_with_the_reason(tmp_path):
    plain, sharded = tmp_path / "step-1", tmp_path / "step-2"
    plain.mkdir()
    (sharded / SHARDED_MODEL_DIR).mkdir(parents=True)
    check_checkpoint_fits(plain, fsdp_run=False)
    check_checkpoint_fits(sharded, fsdp_run=True)
    with pytest.raises(UserError, match="saved by an FSDP run; resume it with an FSDP launch"):
        check_checkpoint_fits(sharded, fsdp_run=False)
    with pytest.raises(UserError, match="with FSDP: it was saved without FSDP"):
        check_checkpoint_fits(plain, fsdp_run=True)
