"""gpt.run_data: a run's data, and the one model config resolved against it."""

import pytest
from accelerate import Accelerator

from gpt.config import load_config
from gpt.errors import UserError
from gpt.run_data import open_data, resolve_model_config

from conftest import TINY


def test_the_model_config_is_resolved_in_place_once(data_root):
    cfg = load_config([*TINY, f"data.root={data_root}", "data.dataset=tiny"])
    assert cfg.model.vocab_size == 0  # the default: the tokenizer's
    accelerator = Accelerator(cpu=True)
    tokenizer, sources = open_data(cfg, accelerator)
    resolved = resolve_model_config(cfg, tokenizer, sources, accelerator)
    assert resolved is cfg.model  # one config: what checkpoints, exports and W&B record is what was built
    assert resolved.vocab_size == tokenizer.vocab_size


def test_a_vocabulary_smaller_than_the_data_is_refused(data_root):
    cfg = load_config([*TINY, f"data.root={data_root}", "data.dataset=tiny", "model.vocab_size=10"])
    accelerator = Accelerator(cpu=True)
    tokenizer, sources = open_data(cfg, accelerator)
    with pytest.raises(UserError, match="vocab"):
        resolve_model_config(cfg, tokenizer, sources, accelerator)
