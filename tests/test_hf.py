"""transformers interop: export to GPT-2 and start from GPT-2, checked on logits. Offline: the GPT-2
models here are small, randomly initialised and saved to temporary folders."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt import hf
from gpt.config import ModelConfig, load_config
from gpt.errors import UserError
from gpt.export import load_exported
from gpt.model import build_model
from gpt.prepare import prepare_text
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, make_tokenizer

from conftest import ROOT, TINY, env, run_script

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` as a user runs it, with the hub switched off."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env(**OFFLINE), capture_output=True, text=True, timeout=300)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Noise on every parameter, so that biases (initialised to 0) and norm gains (1) are not trivially
    equal across a wrong mapping."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def random_ids(vocab: int, batch: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def save_hf_gpt2(folder: Path, activation: str = "gelu_new", n_positions: int = 64, **extra) -> GPT2LMHeadModel:
    """A tiny GPT-2 with the GPT-2 vocabulary, saved as transformers saves any checkpoint."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=50257, activation_function=activation,
        **extra,
    )  # fmt: skip
    model = perturb(GPT2LMHeadModel(config))
    model.save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def gpt2_data(tmp_path_factory, shakespeare) -> Path:
    root = tmp_path_factory.mktemp("data")
    prepare_text(shakespeare[:40_000], root / "tiny_gpt2", "gpt2")
    return root


# ----------------------------------------------------------------------------------------------
# Ours -> transformers


@pytest.mark.parametrize(
    "gelu, bias, pad", [("exact", True, 1), ("tanh", True, 1), ("exact", False, 1), ("exact", True, 64)]
)
def test_exported_gpt2_computes_our_logits(gelu, bias, pad):
    cfg = ModelConfig(
        n_layer=2, n_head=4, n_embd=32, block_size=24, vocab_size=70, gelu=gelu, bias=bias, pad_vocab_to=pad
    )
    torch.manual_seed(0)
    ours = perturb(build_model(cfg))
    theirs = hf.to_hf(ours)
    ids = random_ids(cfg.vocab_size)
    with torch.no_grad():
        expected, _ = ours(ids)
        got = theirs(ids).logits
    assert got.shape[-1] == 70  # padding rows (model.pad_vocab_to) are not exported
    assert (expected[..., :70] - got).abs().max().item() < 1e-5
    assert theirs.config.activation_function == {"exact": "gelu", "tanh": "gelu_new"}[gelu]


def write_our_export(folder: Path, tokenizer, vocab_size: int) -> torch.nn.Module:
    """An export folder as training writes it (weights, config.json, tokenizer.json)."""
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab_size)
    torch.manual_seed(0)
    model = perturb(build_model(cfg))
    weights = folder.parent / "weights.safetensors"
    ckpt.save_weights(model.state_dict(), weights)
    ckpt.write_export(folder, weights, cfg, tokenizer, {"step": 0})
    return model


def test_export_command_writes_a_gpt2_that_loads_offline_with_its_tokenizer(tmp_path, shakespeare):
    src, out = tmp_path / "model", tmp_path / "hf"
    write_our_export(src, GPT2Tokenizer(), 50257)
    r = run_module("gpt.hf", str(src), str(out))
    assert r.returncode == 0, r.stderr
    assert "logits match" in r.stdout

    model = GPT2LMHeadModel.from_pretrained(str(out), local_files_only=True).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(str(out), local_files_only=True)
    text = shakespeare[:300]
    ids = tokenizer(text)["input_ids"]
    assert ids == GPT2Tokenizer().encode(text) and tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.decode(ids) == text and tokenizer.eos_token == "<|endoftext|>"
    ours, _, _ = load_exported(src)
    batch = torch.tensor([ids[:32]])
    with torch.no_grad():
        assert (ours(batch)[0] - model(batch).logits).abs().max().item() < 1e-5


@pytest.mark.parametrize("text", ["abcdefgh \n", None], ids=["one document", "with end-of-text"])
def test_character_model_exports_a_tokenizer_that_auto_classes_and_the_pipeline_load(tmp_path, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    src, out = tmp_path / "model", tmp_path / "hf"
    tokenizer = make_tokenizer("char", text) if text else CharTokenizer("abcdefgh \n", eot=True)
    write_our_export(src, tokenizer, tokenizer.vocab_size)
    hf.export(src, out)
    loaded = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    prompt = "hag be\nfed"
    assert loaded(prompt)["input_ids"] == tokenizer.encode(prompt) and loaded.decode(tokenizer.encode(prompt)) == prompt
    assert len(loaded) == tokenizer.vocab_size and not (out / "vocab.json").exists()
    if tokenizer.eot_id is not None:
        assert loaded.eos_token_id == tokenizer.eot_id and loaded.decode([tokenizer.eot_id]) == tokenizer.EOT_TEXT
    assert AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).config.vocab_size == len(loaded)
    generate = pipeline("text-generation", model=str(out), device="cpu")  # the folder alone, as users give it
    (result,) = generate("bad", max_new_tokens=5, do_sample=False)
    assert result["generated_text"].startswith("bad") and len(result["generated_text"]) >= len("bad") + 1
    assert (out / "model.safetensors").stat().st_mode & 0o777 == ckpt.umask_file_mode()  # not safetensors' 0600
    assert (src / "model.safetensors").stat().st_mode & 0o777 == ckpt.umask_file_mode()


@pytest.mark.parametrize("part", [{"position": "rope"}, {"norm": "rmsnorm"}, {"mlp": "relu2"}, {"tie_head": False}])
def test_a_model_with_parts_gpt2_lacks_is_refused(part):
    model = build_model(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20, **part))
    with pytest.raises(UserError, match=f"model.{next(iter(part))}=.*cannot be exported"):
        hf.to_hf(model)


def test_bigram_model_is_refused(tmp_path):
    src = tmp_path / "model"
    cfg = ModelConfig(kind="bigram", vocab_size=10)
    weights = tmp_path / "w.safetensors"
    ckpt.save_weights(build_model(cfg).state_dict(), weights)
    ckpt.write_export(src, weights, cfg, make_tokenizer("char", "abcdefghij"), {"step": 0})
    with pytest.raises(UserError, match="only model.kind=gpt maps onto GPT-2"):
        hf.export(src, tmp_path / "hf")


# ----------------------------------------------------------------------------------------------
# transformers -> ours


def test_setup_from_a_gpt2_checkpoint_reproduces_its_logits(tmp_path, gpt2_data):
    from gpt.trainer import setup

    source = tmp_path / "gpt2-tiny"
    reference = save_hf_gpt2(source)
    cfg = load_config(
        ["finetune_shakespeare", f"model.init_from={source}", "model.block_size=48", f"data.root={gpt2_data}",
         "data.dataset=tiny_gpt2", f"out_dir={tmp_path / 'run'}", "wandb.mode=disabled", "train.mixed_precision=no"]
    )  # fmt: skip
    run = setup(cfg)
    model = run.accelerator.unwrap_model(run.model).eval()
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.gelu, cfg.model.block_size) == (2, 32, "tanh", 48)
    ids = random_ids(50257, length=48)
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = reference(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-5


def test_finetune_preset_trains_resumes_and_exports_back(tmp_path, gpt2_data):
    source, out, exported = tmp_path / "gpt2-tiny", tmp_path / "run", tmp_path / "hf"
    save_hf_gpt2(source, activation="gelu")
    args = [
        "finetune_shakespeare", *TINY, "train.max_steps=4", "train.eval_interval=2", "train.checkpoint_interval=2",
        "train.log_interval=2", "train.micro_batch_size=8", "train.mixed_precision=no", "train.eval_sample_tokens=8",
        f"model.init_from={source}", f"data.root={gpt2_data}", "data.dataset=tiny_gpt2", f"out_dir={out}",
    ]  # fmt: skip
    r = run_script("train.py", *args, cwd=tmp_path, **OFFLINE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"architecture from {source}: 2 layers, 2 heads, 32 wide, context 64, positions cropped to 32" in r.stdout
    r = run_script("train.py", *args, "train.max_steps=6", cwd=tmp_path, **OFFLINE)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resumed from" in r.stdout and "at step 4" in r.stdout

    r = run_module("gpt.hf", str(out), str(exported))
    assert r.returncode == 0, r.stderr
    ours, _, meta = load_exported(out)
    assert meta["step"] == 6 and ours.cfg.gelu == "exact"
    theirs = GPT2LMHeadModel.from_pretrained(str(exported), local_files_only=True).eval()
    ids = random_ids(50257, length=32)
    with torch.no_grad():
        assert (ours(ids)[0] - theirs(ids).logits).abs().max().item() < 1e-5


def test_init_from_needs_gpt2_tokens(tmp_path):
    save_hf_gpt2(tmp_path / "gpt2-tiny")
    cfg = ModelConfig(init_from=str(tmp_path / "gpt2-tiny"))
    with pytest.raises(UserError, match="needs data made with the gpt2 tokenizer"):
        hf.adopt_architecture(cfg, make_tokenizer("char", "abc"))


def test_init_from_refuses_a_context_longer_than_the_source(tmp_path):
    save_hf_gpt2(tmp_path / "gpt2-tiny", n_positions=64)
    cfg = ModelConfig(init_from=str(tmp_path / "gpt2-tiny"), block_size=65)
    with pytest.raises(UserError, match=r"model.block_size \(65\) is longer than the context of .* \(64\)"):
        hf.adopt_architecture(cfg, GPT2Tokenizer())


def test_init_from_refuses_a_gpt2_it_cannot_compute(tmp_path):
    source = tmp_path / "gpt2-relu"
    save_hf_gpt2(source, activation="relu")
    with pytest.raises(UserError, match="activation_function 'relu' is not a GELU"):
        hf.adopt_architecture(ModelConfig(init_from=str(source)), GPT2Tokenizer())


def test_init_from_a_missing_directory_is_one_clear_error_without_a_download(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        hf.adopt_architecture(ModelConfig(init_from=str(tmp_path / "nope")), GPT2Tokenizer())


def test_resume_refuses_a_model_with_the_other_gelu(tmp_path):
    saved = {"kind": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "bias": True,
             "vocab_size": 65, "gelu": "tanh"}  # fmt: skip
    with pytest.raises(UserError, match="model.gelu is 'tanh' in the checkpoint but 'exact' now"):
        ckpt.check_same_model(saved, ModelConfig(vocab_size=65), tmp_path)
