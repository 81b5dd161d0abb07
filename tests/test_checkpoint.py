import json

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt.checkpoint import (
    MANIFEST,
    check_same_model,
    clean_state_dict,
    latest_checkpoint,
    load_into,
    rotate,
    save_weights,
    verify,
    write_manifest,
)
from gpt.config import ModelConfig, to_dict
from gpt.errors import UserError
from gpt.model import GPT

from conftest import tiny

CFG = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)


def test_compiled_and_ddp_prefixes_are_stripped(tmp_path):
    torch.manual_seed(0)
    model = GPT(CFG)
    compiled = torch.compile(model)  # compilation is lazy: state_dict() already carries _orig_mod.
    wrapped = {f"module.{k}": v for k, v in compiled.state_dict().items()}
    assert all(k.startswith("module._orig_mod.") for k in wrapped)
    save_weights(wrapped, tmp_path / "w.safetensors")
    plain = GPT(CFG)
    load_into(plain, tmp_path / "w.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(plain.state_dict()[name], tensor)
    assert list(clean_state_dict(wrapped)) == list(model.state_dict())


def test_tied_head_survives_a_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GPT(CFG)
    save_weights(model.state_dict(), tmp_path / "w.safetensors")
    loaded = GPT(CFG)
    load_into(loaded, tmp_path / "w.safetensors")
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())
    idx = torch.randint(0, 20, (2, 8))
    assert torch.equal(model(idx)[0], loaded(idx)[0])


def test_weights_of_another_shape_are_refused(tmp_path):
    save_weights(GPT(CFG).state_dict(), tmp_path / "w.safetensors")
    bigger = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    with pytest.raises(UserError, match="do not fit the model"):
        load_into(bigger, tmp_path / "w.safetensors")


def make_checkpoint(root, step, val_loss=None, complete=True):
    folder = root / "checkpoints" / f"step-{step:07d}"
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(bytes(range(256)) * 4)
    metrics = {} if val_loss is None else {"eval/val/loss": val_loss}
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "metrics": metrics}))
    if complete:
        write_manifest(folder)
    return folder


def test_verify_names_a_truncated_or_altered_file(tmp_path):
    folder = make_checkpoint(tmp_path, 10)
    verify(folder)
    data = folder / "data.bin"
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(UserError, match=f"{data} is truncated or corrupt"):
        verify(folder)
    data.write_bytes(bytes(reversed(range(256))) * 4)
    with pytest.raises(UserError, match=f"{data} is corrupt: its sha256"):
        verify(folder)


def test_latest_skips_incomplete_checkpoints(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False)  # interrupted while saving
    assert latest_checkpoint(tmp_path).name == "step-0000010"
    (tmp_path / "checkpoints" / "latest").write_text("step-0000020\n")  # a pointer to it is ignored too
    assert latest_checkpoint(tmp_path).name == "step-0000010"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_rotation_keeps_the_last_and_the_best(tmp_path):
    for step, loss in [(10, 2.0), (20, 1.5), (30, 1.7), (40, 1.8)]:
        make_checkpoint(tmp_path, step, loss)
    (tmp_path / "checkpoints" / ".tmp-step-0000050").mkdir()  # left by a killed save
    rotate(tmp_path, keep_last=2, keep_best=True)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-0000020", "step-0000030", "step-0000040"]
    assert (tmp_path / "checkpoints" / "best").read_text().strip() == "step-0000020"
    rotate(tmp_path, keep_last=1, keep_best=False)
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*")] == ["step-0000040"]
    assert (tmp_path / "checkpoints" / "step-0000040" / MANIFEST).is_file()


def test_compiled_model_weights_save_under_plain_names():
    model = GPT(tiny())
    compiled = torch.compile(model)  # wrapping is lazy: nothing compiles until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert clean_state_dict(compiled.state_dict()).keys() == model.state_dict().keys()


def test_resume_refuses_another_architecture(tmp_path):
    saved = to_dict(tiny())
    del saved["position"]  # a checkpoint from before the option existed reads as the default
    check_same_model(saved, tiny(), tmp_path)
    with pytest.raises(UserError, match="model.position is 'learned' in the checkpoint but 'rope' now"):
        check_same_model(saved, tiny(position="rope"), tmp_path)


def test_a_hard_linked_file_is_hashed_once(tmp_path, monkeypatch):
    from gpt import durable

    (tmp_path / "model").mkdir()
    (tmp_path / "w.bin").write_bytes(b"w" * 1000)
    (tmp_path / "model" / "w.bin").hardlink_to(tmp_path / "w.bin")
    calls = []
    real = durable.sha256
    monkeypatch.setattr(durable, "sha256", lambda path, sync=False: calls.append(path) or real(path, sync))
    ckpt.write_manifest(tmp_path)
    ckpt.verify(tmp_path)
    assert len(calls) == 2  # one hash when writing, one when verifying: not one per name
