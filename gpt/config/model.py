"""The model architecture: ModelConfig, with each field marked as part of what the weights compute or not."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gpt.config.fields import NON_NEGATIVE, POSITIVE, PROBABILITY, doc

CHUNKED_LOSS_FROM_VOCAB = 8192  # model.loss_chunk=0 (automatic) chunks the loss from this padded vocabulary on
AUTO_LOSS_CHUNK = 2048  # and then takes this many tokens per piece


@dataclass
class ModelConfig:
    """Model architecture. The checkpoint stores it, and sampling rebuilds the model from it."""

    kind: Literal["gpt", "bigram"] = doc(
        "gpt", "'gpt' (the transformer) or 'bigram' (the lecture's baseline).", architecture=True
    )
    n_layer: int = doc(4, "Number of transformer blocks.", check=POSITIVE, architecture=True)
    n_head: int = doc(4, "Attention heads per block; must divide n_embd.", check=POSITIVE, architecture=True)
    n_embd: int = doc(128, "Width of the residual stream.", check=POSITIVE, architecture=True)
    block_size: int = doc(64, "Context length in tokens.", check=POSITIVE, architecture=True)
    dropout: float = doc(
        0.0,
        "Dropout probability on attention weights, residual branches and embeddings.",
        check=PROBABILITY,
        architecture=False,
    )
    bias: bool = doc(True, "Biases in Linear layers and LayerNorms (False is slightly faster).", architecture=True)
    vocab_size: int = doc(
        0, "Vocabulary size; 0 takes it from the tokenizer of the data.", check=NON_NEGATIVE, architecture=True
    )
    gelu: Literal["exact", "tanh"] = doc(
        "exact",
        "GELU in the MLP: 'exact' (erf, as in the lecture) or 'tanh' (the approximation GPT-2 was trained "
        "with; taken from the source model with init_from).",
        architecture=True,
    )
    init_from: str = doc(
        "",
        "Start from a pretrained GPT-2: a local transformers checkpoint directory or a Hugging Face hub id "
        "(e.g. gpt2; needs the hf extra and, for a hub id, network). The architecture and weights come from it; "
        "block_size may be smaller than its context (positions are cropped); the data must use the gpt2 "
        "tokenizer. Empty: random initialisation.",
        architecture=False,
    )
    pad_vocab_to: int = doc(
        1,
        "Round the GPT's embedding and head up to a multiple of this many rows (64 on GPUs: faster matmuls); "
        "padded ids are never targets and never sampled. 1: no padding.",
        check=">= 1",
        architecture=True,
    )
    position: Literal["learned", "rope"] = doc(
        "learned",
        "Position information: 'learned' absolute embeddings (the lecture's) or 'rope' (rotary, in attention).",
        architecture=True,
        gpt2="learned",
    )
    rope_base: float = doc(
        10000.0,
        "Rotary embeddings: base of the geometric sequence of rotation frequencies.",
        check="> 1",
        architecture=True,
    )
    norm: Literal["layernorm", "rmsnorm"] = doc(
        "layernorm", "Normalisation layers: 'layernorm' or 'rmsnorm'.", architecture=True, gpt2="layernorm"
    )
    qk_norm: bool = doc(
        False,
        "QK-norm: scale every query and key vector to unit RMS (no learned gain) before attention.",
        architecture=True,
        gpt2=False,
    )
    attention: Literal["sdpa", "explicit"] = doc(
        "sdpa",
        "How attention is computed (same result): 'sdpa' torch's fused kernel (flash attention on GPUs), or "
        "'explicit' softmax(q k^T / sqrt(hs)) v as matmuls, faster on CPUs in bf16 for short contexts (memory ~ T^2).",
        architecture=False,
    )
    loss_chunk: int = doc(
        0,
        "Tokens per piece of the loss: training computes the head and cross-entropy this many tokens at a time, "
        "recomputing each piece in backward, so the whole (batch x block_size x vocabulary) logits never exist "
        "(same loss and gradients). 0: automatic, 2048 when the padded vocabulary has 8192 or more entries "
        "(GPT-2's: 64 x 1024 tokens of float32 logits would take 13 GB), else in one piece; -1: always in one piece.",
        check=">= -1",
        architecture=False,
    )
    mlp: Literal["gelu", "relu2"] = doc(
        "gelu", "MLP non-linearity: 'gelu' or 'relu2' (squared ReLU).", architecture=True, gpt2="gelu"
    )
    tie_head: bool = doc(
        True,
        "Use the token embedding as the LM head (weight tying); false adds a separate head.",
        architecture=True,
        gpt2=True,
    )
    zero_init_proj: bool = doc(
        False,
        "Initialise the attention and MLP output projections to zero (each block starts as the identity).",
        architecture=False,
    )
    logit_softcap: float = doc(
        0.0,
        "Soft-cap the LM head's logits to (-c, c) with c * tanh(logits / c) (modded-nanogpt: 30; gemma 2); 0: no cap.",
        check=NON_NEGATIVE,
        architecture=True,
        gpt2=0.0,
    )
    unet_skips: bool = doc(
        False,
        "U-net skip connections: the output of block i of the first half is added, times a learned scalar "
        "(starting at 1), to the input of the mirrored block n_layer-1-i of the second half (modded-nanogpt).",
        architecture=True,
        gpt2=False,
    )
    value_embeds: int = doc(
        0,
        "Value embeddings: this many extra token-embedding tables, each mixed (learned scalars) into the "
        "attention values of one of the first blocks and of the same-numbered one of the last blocks "
        "(table i: block i and block n_layer-k+i; modded-nanogpt). At most n_layer // 2 (more blocks "
        "than tables: the middle ones have none); 0: none.",
        check=NON_NEGATIVE,
        architecture=True,
        gpt2=0,
    )

    @property
    def loss_chunk_tokens(self) -> int:
        """Tokens per piece of the training loss (loss_chunk resolved); 0: the loss in one piece."""
        if self.loss_chunk != 0:
            return max(self.loss_chunk, 0)
        return AUTO_LOSS_CHUNK if self.padded_vocab_size >= CHUNKED_LOSS_FROM_VOCAB else 0

    @property
    def padded_vocab_size(self) -> int:
        """vocab_size rounded up to a multiple of pad_vocab_to: the rows of the GPT's embedding and head."""
        multiple = max(1, self.pad_vocab_to)
        return -(-self.vocab_size // multiple) * multiple


def architecture_fields() -> tuple[str, ...]:
    """The ModelConfig fields that define what the weights compute (marked ``architecture=True``)."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata["architecture"])


def gpt2_values() -> dict[str, Any]:
    """The ModelConfig fields GPT-2 has one fixed value for, and that value (marked ``gpt2=``)."""
    return {f.name: f.metadata["gpt2"] for f in dataclasses.fields(ModelConfig) if "gpt2" in f.metadata}
