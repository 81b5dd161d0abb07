"""Hugging Face ``transformers`` interop: export a trained model as a GPT-2, or start from one.

    python -m gpt.hf out/finetune hf/finetune        # export the newest checkpoint of a run
    python -m gpt.hf out/default/checkpoints/step-0002000 hf/default
    python -m gpt.hf --help

The export folder is a ``GPT2LMHeadModel`` (``config.json``, ``model.safetensors``) that
``from_pretrained`` loads offline, plus tokenizer files: GPT-2's for GPT-2 BPE models, a
character-level ``tokenizer.json`` for character models; ``AutoTokenizer`` loads either::

    from transformers import AutoTokenizer, GPT2LMHeadModel, pipeline
    model = GPT2LMHeadModel.from_pretrained("hf/finetune")
    tokenizer = AutoTokenizer.from_pretrained("hf/finetune")
    pipeline("text-generation", model="hf/finetune")("ROMEO:", max_new_tokens=50)

The other way, ``model.init_from=gpt2`` (a hub id, or a local checkpoint directory) starts training
from pretrained GPT-2 weights (see ``configs/finetune_shakespeare.yaml``).

The two models are the same function up to three differences, handled here:
- GPT-2 stores its linear layers as ``Conv1D``, whose weights are the transpose of ``nn.Linear``'s;
- GPT-2 was trained with the tanh approximation of GELU (``gelu_new``); ``model.gelu`` says which
  one our MLP uses, and the export sets ``activation_function`` to match;
- GPT-2 always has biases; a model trained with ``model.bias=false`` exports with zero biases,
  which computes the same thing.
The bigram model has no GPT-2 counterpart and is refused. Needs the ``hf`` extra
(``pip install -e ".[hf]"``); nothing is downloaded unless ``init_from`` names a hub id.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt.config import ModelConfig, doc, gpt2_values, parse_flags
from gpt.errors import UserError, run_main
from gpt.tokenizer import ASSETS, CharTokenizer, Tokenizer

if TYPE_CHECKING:  # torch loads when a model is converted: --help answers at once
    import torch

# our GELU setting -> transformers' activation_function, and back
ACTIVATION_OUT = {"exact": "gelu", "tanh": "gelu_new"}
ACTIVATION_IN = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}

# (our parameter name in block i, GPT-2's name in block i, Conv1D: stored transposed)
BLOCK_PARAMS = [
    ("ln_1.weight", "ln_1.weight", False),
    ("ln_1.bias", "ln_1.bias", False),
    ("attn.qkv.weight", "attn.c_attn.weight", True),
    ("attn.qkv.bias", "attn.c_attn.bias", False),
    ("attn.proj.weight", "attn.c_proj.weight", True),
    ("attn.proj.bias", "attn.c_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False),
    ("ln_2.bias", "ln_2.bias", False),
    ("mlp.fc.weight", "mlp.c_fc.weight", True),
    ("mlp.fc.bias", "mlp.c_fc.bias", False),
    ("mlp.proj.weight", "mlp.c_proj.weight", True),
    ("mlp.proj.bias", "mlp.c_proj.bias", False),
]
TOP_PARAMS = [
    ("wte.weight", "transformer.wte.weight"),
    ("wpe.weight", "transformer.wpe.weight"),
    ("ln_f.weight", "transformer.ln_f.weight"),
    ("ln_f.bias", "transformer.ln_f.bias"),
]


def require_transformers() -> None:
    try:
        from transformers.utils import logging
    except ImportError:
        raise UserError(
            'this needs the transformers package: pip install -e ".[hf]" (or pip install transformers)'
        ) from None
    logging.disable_progress_bar()  # one line per model, not a progress bar per load and save


def name_pairs(n_layer: int) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, transposed) for every parameter of an n_layer model."""
    pairs = [(ours, theirs, False) for ours, theirs in TOP_PARAMS]
    for i in range(n_layer):
        pairs += [(f"blocks.{i}.{ours}", f"transformer.h.{i}.{theirs}", t) for ours, theirs, t in BLOCK_PARAMS]
    return pairs


# ----------------------------------------------------------------------------------------------
# Ours -> transformers


# The ModelConfig values GPT-2 has; a model with another one computes something GPT2LMHeadModel cannot.
GPT2_ARCHITECTURE = gpt2_values()  # e.g. position=learned, norm=layernorm: the parts GPT-2 has one kind of


def check_exportable(cfg: ModelConfig) -> None:
    if cfg.kind != "gpt":
        raise UserError(f"only model.kind=gpt maps onto GPT-2; this is a {cfg.kind} model")
    differing = [f"model.{k}={getattr(cfg, k)}" for k, v in GPT2_ARCHITECTURE.items() if getattr(cfg, k) != v]
    if differing:
        raise UserError(
            f"this model has parts GPT-2 does not ({', '.join(differing)}), so it cannot be exported to "
            "transformers' GPT2LMHeadModel; use its safetensors export with sample.py and gpt.generate"
        )


def hf_config(cfg: ModelConfig, eot_id: int | None):
    """The GPT2Config that computes what our GPT of ``cfg`` computes."""
    from transformers import GPT2Config

    check_exportable(cfg)
    return GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, n_inner=4 * cfg.n_embd, activation_function=ACTIVATION_OUT[cfg.gelu],
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5,
        scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
        tie_word_embeddings=True, bos_token_id=eot_id, eos_token_id=eot_id, architectures=["GPT2LMHeadModel"],
    )  # fmt: skip


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 parameter names and layouts for our weights; zero biases for a model without biases."""
    out = {}
    for ours, theirs, transposed in name_pairs(cfg.n_layer):
        if ours in state:
            tensor = state[ours]
            out[theirs] = tensor.t().contiguous() if transposed else tensor
        elif ours.endswith(".bias") and not cfg.bias:
            width = state[ours[: -len("bias")] + "weight"].shape[0]  # a bias is as wide as the layer's output
            out[theirs] = state["wte.weight"].new_zeros(width)
        else:
            raise UserError(f"the weights have no {ours!r}; they are not those of a model.kind=gpt model")
    out["transformer.wte.weight"] = state["wte.weight"][: cfg.vocab_size]  # without padding rows (pad_vocab_to)
    out["lm_head.weight"] = out["transformer.wte.weight"]  # tied: the head is the token embedding
    return out


def to_hf(model: torch.nn.Module, eot_id: int | None = None):
    """A transformers GPT2LMHeadModel (eval mode, fp32) with the weights of our GPT."""
    require_transformers()
    from transformers import GPT2LMHeadModel

    cfg = model.cfg
    hf_model = GPT2LMHeadModel(hf_config(cfg, eot_id))
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    hf_model.load_state_dict(to_hf_state_dict(state, cfg), strict=True)
    hf_model.tie_weights()
    return hf_model.eval()


def write_gpt2_tokenizer(folder: Path, max_length: int) -> None:
    """GPT-2 BPE tokenizer files from the bundled vocabulary: vocab.json and merges.txt, and the
    tokenizer.json/tokenizer_config.json that transformers writes from them."""
    from transformers import GPT2TokenizerFast

    shutil.copyfile(ASSETS / "gpt2" / "encoder.json", folder / "vocab.json")  # same format: token -> id
    shutil.copyfile(ASSETS / "gpt2" / "vocab.bpe", folder / "merges.txt")  # same format: one merge per line
    tokenizer = GPT2TokenizerFast.from_pretrained(str(folder), model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))


def write_char_tokenizer(folder: Path, tokenizer: CharTokenizer, max_length: int) -> None:
    """A character-level tokenizer that ``AutoTokenizer.from_pretrained`` loads (tokenizer.json in the
    ``tokenizers`` format): every character is one token of a word-level vocabulary, decoding joins them,
    and end-of-text, where the vocabulary has it, is the special token that ends and starts documents.
    A character outside the vocabulary is an error there too (``tokenizers`` reports a missing [UNK])."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(tokenizer.chars)}
    special = {}
    if tokenizer.eot_id is not None:
        vocab[tokenizer.EOT_TEXT] = tokenizer.eot_id
        special = {"eos_token": tokenizer.EOT_TEXT, "bos_token": tokenizer.EOT_TEXT}
    rust = RustTokenizer(models.WordLevel(vocab))
    rust.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    rust.decoder = decoders.Fuse()  # characters joined as they are, no spaces between
    fast = PreTrainedTokenizerFast(tokenizer_object=rust, model_max_length=max_length, **special)
    fast.save_pretrained(str(folder))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) | {"tokenizer_class": "PreTrainedTokenizerFast"}  # 4 and 5 know it
    config_file.write_text(json.dumps(config, indent=2))


def export(src: str | Path, out_dir: str | Path) -> float:
    """Write ``out_dir`` as a transformers GPT-2 from a run, checkpoint or export folder; returns the
    largest absolute difference between its logits and ours on a probe batch (checked below 1e-4)."""
    from gpt import checkpoint as ckpt
    from gpt.export import load_exported

    require_transformers()
    model, tokenizer, _ = load_exported(src)
    check_exportable(model.cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model = to_hf(model, tokenizer.eot_id)
    hf_model.save_pretrained(str(out))
    os.chmod(out / "model.safetensors", ckpt.umask_file_mode())  # safetensors writes 0600
    if isinstance(tokenizer, CharTokenizer):
        write_char_tokenizer(out, tokenizer, model.cfg.block_size)
    else:
        write_gpt2_tokenizer(out, model.cfg.block_size)
    return max_logit_difference(model, out)


def max_logit_difference(model: torch.nn.Module, hf_dir: Path) -> float:
    """Reload the export the way users will and compare logits with ours on a fixed random batch."""
    import torch
    from transformers import GPT2LMHeadModel

    reloaded = GPT2LMHeadModel.from_pretrained(str(hf_dir), local_files_only=True).float().eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (2, min(model.cfg.block_size, 32)), generator=generator)
    with torch.no_grad():
        ours, _ = model.float()(ids)
        theirs = reloaded(ids).logits
    diff = (ours - theirs).abs().max().item()
    if diff > 1e-4:
        raise UserError(f"the export in {hf_dir} does not reproduce the model: logits differ by up to {diff:.2e}")
    return diff


# ----------------------------------------------------------------------------------------------
# transformers -> ours


def is_local(source: str) -> bool:
    """A directory on this machine; otherwise a hub id. A path that does not exist is refused here,
    so that a typo never turns into a download attempt."""
    if Path(source).expanduser().exists():
        return True
    if source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1:
        raise UserError(f"model.init_from: {source} does not exist (and is not a hub id like gpt2 or org/name)")
    return False


def source_config(source: str) -> Any:
    """The GPT2Config of ``source``, refused with one clear error when our GPT cannot compute it."""
    require_transformers()
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, local_files_only=is_local(source))
    except (OSError, ValueError) as e:
        raise UserError(cannot_load(source, e)) from None
    problems = []
    if config.model_type != "gpt2":
        problems.append(f"model_type is {config.model_type!r}, not 'gpt2'")
    else:
        if config.activation_function not in ACTIVATION_IN:
            problems.append(f"activation_function {config.activation_function!r} is not a GELU")
        if config.n_inner not in (None, 4 * config.n_embd):
            problems.append(f"n_inner is {config.n_inner}, not 4 x n_embd")
        if abs(config.layer_norm_epsilon - 1e-5) > 1e-12:
            problems.append(f"layer_norm_epsilon is {config.layer_norm_epsilon}, not 1e-5")
        if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
            problems.append("attention is not scaled by 1/sqrt(head size)")
        if getattr(config, "add_cross_attention", False):
            problems.append("it has cross-attention")
        if not config.tie_word_embeddings:
            problems.append("its output head is not tied to the token embedding")
    if problems:
        raise UserError(f"cannot start from {source!r}: " + "; ".join(problems))
    return config


def cannot_load(source: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(source).expanduser().exists():
        return f"cannot load {source!r} as a transformers GPT-2 checkpoint: {first}"
    return (
        f"cannot load {source!r}: it is not a local directory, and fetching it from the Hugging Face hub failed "
        f"({first}); where there is network, `hf download {source} --local-dir DIR`, then pass DIR"
    )


def adopt_architecture(cfg: ModelConfig, tokenizer: Tokenizer) -> str:
    """Set the architecture fields of ``cfg`` (in place) to those of ``cfg.init_from``; returns a
    line that says what was taken. block_size stays, at most the source's context."""
    source = cfg.init_from
    if tokenizer.identity != "gpt2":
        raise UserError(
            f"model.init_from={source} needs data made with the gpt2 tokenizer (e.g. data.dataset=shakespeare_gpt2), "
            f"but the data's tokenizer is {tokenizer.identity!r}"
        )
    config = source_config(source)
    if cfg.block_size > config.n_positions:
        raise UserError(
            f"model.block_size ({cfg.block_size}) is longer than the context of {source} ({config.n_positions}); "
            f"use model.block_size={config.n_positions} or less"
        )
    cfg.kind, cfg.n_layer, cfg.n_head, cfg.n_embd = "gpt", config.n_layer, config.n_head, config.n_embd
    cfg.bias, cfg.vocab_size, cfg.gelu = True, config.vocab_size, ACTIVATION_IN[config.activation_function]
    for key, value in GPT2_ARCHITECTURE.items():
        setattr(cfg, key, value)
    cropped = f", positions cropped to {cfg.block_size}" if cfg.block_size < config.n_positions else ""
    return (
        f"architecture from {source}: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, "
        f"context {config.n_positions}{cropped}, vocabulary {cfg.vocab_size}, {cfg.gelu} GELU"
    )


def from_hf_state_dict(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our parameter names and layouts for GPT-2 weights, position embeddings cropped to block_size."""
    import torch

    state = {}
    for ours, theirs, transposed in name_pairs(cfg.n_layer):
        if theirs not in hf_state:
            raise UserError(f"the GPT-2 checkpoint has no {theirs!r}")
        tensor = hf_state[theirs].detach().float()
        state[ours] = tensor.t().contiguous() if transposed else tensor.clone()
    state["wpe.weight"] = state["wpe.weight"][: cfg.block_size].contiguous()
    padding = cfg.padded_vocab_size - cfg.vocab_size  # model.pad_vocab_to: rows that are never used
    state["wte.weight"] = torch.cat([state["wte.weight"], state["wte.weight"].new_zeros(padding, cfg.n_embd)])
    return state


def load_pretrained(model: torch.nn.Module, source: str) -> None:
    """Copy the weights of the transformers GPT-2 ``source`` into our GPT (built by adopt_architecture's config)."""
    require_transformers()
    from transformers import GPT2LMHeadModel

    try:
        hf_model = GPT2LMHeadModel.from_pretrained(source, local_files_only=is_local(source))
    except (OSError, ValueError) as e:
        raise UserError(cannot_load(source, e)) from None
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), model.cfg), strict=True)


# ----------------------------------------------------------------------------------------------
# Command line


@dataclass
class HfOptions:
    """The arguments of python -m gpt.hf."""

    src: str = doc("", "Run directory (its newest checkpoint), checkpoint or model folder.", positional=True)
    out: str = doc("", "Folder to write the transformers model into.", positional=True)


def main(argv: list[str]) -> int:
    args = parse_flags(HfOptions, argv, "python -m gpt.hf", __doc__)
    diff = export(args.src, args.out)
    print(f"wrote a transformers GPT-2 to {args.out}; its logits match the source model's (max |diff| {diff:.1e})")
    return 0


if __name__ == "__main__":
    run_main(main)
