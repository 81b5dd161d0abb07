"""Typed run configuration: one dataclass per concern, YAML presets, ``key.sub=value`` overrides.

    python -m gpt.config               # every config key with its type, default and meaning
    python -m gpt.config shakespeare_char train.max_steps=100   # the values a preset and overrides give
    python -m gpt.config --markdown    # the same as the README's config table

Every field carries its documentation in ``metadata["doc"]``; ``train.py --help`` and the config
table in the README are generated from it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from gpt.errors import UserError, run_main
from gpt.paths import check_folder

PRESET_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs")


def doc(default: Any, text: str, check: str = "", architecture: bool | None = None, gpt2: Any = None) -> Any:
    """A dataclass field with a default value, its documentation and the rule its values must follow
    (``check``: see ``allowed``), checked by ``validate`` and ``parse_flags``.

    ModelConfig fields also say whether they are part of the ``architecture`` (what the weights compute:
    a checkpoint resumes or loads only into the same values) and, where GPT-2 has one fixed value for it,
    that value (``gpt2``: a model with another value cannot be exported to transformers' GPT2LMHeadModel).
    """
    metadata: dict[str, Any] = {"doc": text, "check": check}
    if architecture is not None:
        metadata["architecture"] = architecture
    if gpt2 is not None:
        metadata["gpt2"] = gpt2
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# Rules for ``doc(..., check=...)``: a comparison (``> 0``, ``>= 0``), an interval with its ends included
# ``[`` or excluded ``(`` (``[0, 1)``), or NON_EMPTY for text. Every float must also be finite.
POSITIVE, NON_NEGATIVE, PROBABILITY, NON_EMPTY = "> 0", ">= 0", "[0, 1)", "non-empty"
SEED = f"[0, {2**32})"  # what numpy's legacy seeding (accelerate's set_seed) accepts


def allowed(value: Any, check: str) -> bool:
    """Whether ``value`` follows the rule ``check`` (see ``doc``); an empty rule allows anything."""
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if not check:
        return True
    if check == NON_EMPTY:
        return bool(str(value).strip())
    if check.startswith(">="):
        return value >= float(check[2:])
    if check.startswith(">"):
        return value > float(check[1:])
    low, high = (float(end) for end in check[1:-1].split(","))
    above = value >= low if check[0] == "[" else value > low
    below = value <= high if check[-1] == "]" else value < high
    return above and below


def describe(check: str) -> str:
    if check == NON_EMPTY:
        return "non-empty"
    return check if check[0] in "<>" else f"in {check}"


def check_fields(section: Any, prefix: str = "") -> None:
    """Every field of a config section (and its sub-sections) against the rule declared with it."""
    for name, (f, tp) in _fields(section).items():
        value, key = getattr(section, name), prefix + name
        if _is_section(tp):
            check_fields(value, f"{key}.")
        elif not allowed(value, f.metadata.get("check", "")):
            rule = describe(f.metadata["check"])
            if isinstance(value, float) and not math.isfinite(value):
                rule = f"finite and {rule}" if f.metadata["check"] else "finite"
            meaning = re.split(r"[.:;] ", f.metadata["doc"])[0].rstrip(".")  # the doc's first clause
            raise UserError(f"config key '{key}' must be {rule}, got {value!r} ({meaning})")


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


@dataclass
class DataConfig:
    """Where the token files are and how they were made."""

    dataset: str = doc(
        "shakespeare_char",
        "Folder under data.root with train/val token files and tokenizer.json. The built-in "
        "'shakespeare_char' and 'shakespeare_gpt2' are prepared from the bundled text when missing.",
        check=NON_EMPTY,
    )
    root: str = doc("data", "Directory that holds prepared datasets.", check=NON_EMPTY)
    mixture: list[str] = doc(
        [],
        "Train on several datasets under root, each row of a batch drawn from one by weight: NAME:WEIGHT entries, "
        "e.g. web:0.7,books:0.2,code:0.1 (weights are normalised; one tokenizer for all). Empty: dataset alone. "
        "See gpt.mixture.",
    )
    align: Literal["random", "document"] = doc(
        "random",
        "Where training windows start: 'random' (any token) or 'document' (the first token of a document: after "
        "an end-of-text token or at the start of a shard; needs data prepared from several documents).",
    )


@dataclass
class TrainConfig:
    """The optimisation: batch, schedule, precision, and how often to evaluate and save."""

    max_steps: int = doc(1500, "Number of optimizer steps.", check=POSITIVE)
    batch_size: int = doc(
        32,
        "Global batch per optimizer step, in sequences, summed over processes and accumulation steps.",
        check=POSITIVE,
    )
    micro_batch_size: int | Literal["auto"] = doc(
        "auto",
        "Sequences per forward pass per process. Accumulation steps = batch_size / (micro_batch_size * "
        "processes), derived at start-up. 'auto': the largest divisor of batch_size / processes that fits "
        "the GPU's memory by gpt.plan's estimate (on CPU: all of it); a number must divide evenly.",
    )
    learning_rate: float = doc(3e-3, "Peak learning rate, reached at the end of warm-up.", check=POSITIVE)
    min_lr: float = doc(3e-4, "Learning rate at the end of the decay.", check=NON_NEGATIVE)
    warmup_steps: int = doc(100, "Steps of linear warm-up from 0 to learning_rate.", check=NON_NEGATIVE)
    schedule: Literal["cosine", "wsd", "linear", "constant"] = doc(
        "cosine",
        "After warm-up: 'cosine' decay to min_lr at the end; 'linear' decay; 'constant' (no decay); 'wsd' "
        "(warmup-stable-decay): hold learning_rate, then decay over the last decay_fraction of the run, so a "
        "stable-phase checkpoint can be resumed with a larger max_steps and the decay moves (gpt.schedule).",
    )
    decay_fraction: float = doc(
        0.2, "wsd: share of the post-warm-up run (steps, or time budget) spent decaying.", check="(0, 1]"
    )
    decay_shape: Literal["linear", "cosine", "sqrt"] = doc(
        "linear", "wsd: shape of the decay to min_lr: 'linear', 'cosine' or 'sqrt' (1 - sqrt, a fast then slow drop)."
    )
    weight_decay: float = doc(
        0.1, "AdamW weight decay, applied to matrices (not biases, norms or ...).", check=NON_NEGATIVE
    )
    beta1: float = doc(0.9, "AdamW beta1.", check=PROBABILITY)
    beta2: float = doc(0.99, "AdamW beta2.", check=PROBABILITY)
    grad_clip: float = doc(1.0, "Clip the global gradient norm to this value; 0 disables clipping.", check=NON_NEGATIVE)
    spike_loss_ratio: float = doc(
        0.0,
        "Spike guard: skip the update of a step whose loss is more than this many times the median of the last "
        "spike_window accepted steps (e.g. 3); 0: off. Costs one synchronisation per step (gpt.spike).",
        check=NON_NEGATIVE,
    )
    spike_grad_ratio: float = doc(
        0.0, "Spike guard: the same for the gradient norm before clipping (e.g. 10); 0: off.", check=NON_NEGATIVE
    )
    spike_window: int = doc(
        50, "Spike guard: accepted steps in the running median; the guard acts once it is full.", check=POSITIVE
    )
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = doc(
        "auto",
        "Autocast precision through accelerate: 'no', 'bf16' (CPU and GPU) or 'fp16' (GPU only); 'auto' takes the "
        "launch's (accelerate launch --mixed_precision, or its config file), else 'no'. bf16 on a CPU without "
        "native bf16 falls back to fp32: see train.cpu_bf16.",
    )
    cpu_bf16: Literal["auto", "always"] = doc(
        "auto",
        "bf16 (from train.mixed_precision or the launch) on a CPU: 'auto' times a matmul of the blocks' shape and "
        "one of the LM head's in bf16 and fp32 at start-up and runs in fp32 what bf16 would slow down: everything "
        "(CPUs without AVX512-BF16 or AMX, where bf16 is emulated and several times slower), or only the LM head "
        "and loss; one line says what was chosen. 'always' keeps bf16 throughout.",
    )
    compile: bool = doc(False, "Wrap the model in torch.compile.")
    activation_checkpointing: bool = doc(
        False,
        "Recompute each transformer block's activations in backward instead of keeping them: a block keeps "
        "only its input, for about a third more compute, so larger models and batches fit; same loss and "
        "gradients. Under FSDP this is accelerate's (launch configs can also set fsdp_activation_checkpointing), "
        "which needs model.dropout=0.",
    )
    matmul_precision: Literal["auto", "highest", "high", "medium"] = doc(
        "auto",
        "float32 matmuls (torch.set_float32_matmul_precision): 'highest' full fp32; 'high' TF32 on NVIDIA GPUs; "
        "'medium' bf16 inputs with fp32 sums (GPUs, and CPUs with AVX512-BF16 or AMX). 'auto': 'high' on CUDA, "
        "else 'highest'.",
    )
    peak_tflops: float = doc(
        0.0,
        "Peak TFLOP/s per device to report MFU against; 0: looked up by GPU and by the precision the matmuls run in "
        "(gpt.perf.PEAK_TFLOPS), none on CPU.",
        check=NON_NEGATIVE,
    )
    cpu_threads: int = doc(
        0,
        "Threads per process when training on CPU; 0: this machine's cores shared out over its processes "
        "(accelerate launch otherwise leaves each process one thread).",
        check=NON_NEGATIVE,
    )
    log_interval: int = doc(50, "Log train loss, learning rate and throughput every this many steps.", check=POSITIVE)
    eval_interval: int = doc(500, "Evaluate train and val loss every this many steps (and at the end).", check=POSITIVE)
    eval_windows: int = doc(
        256,
        "Windows of block_size tokens per split in each evaluation, shared out over processes.",
        check=POSITIVE,
    )
    final_eval: bool = doc(
        True,
        "After the last step, evaluate on the whole val split (gpt.evaluate: loss, perplexity, bits per byte), "
        "log it to W&B as final/val/* and write it to out_dir/eval.json.",
    )
    eval_samples: int = doc(
        3,
        "Text samples generated at each evaluation (main process), written to samples.jsonl and a W&B table; "
        "0 disables. Skipped under FSDP, where a forward pass needs every process.",
        check=NON_NEGATIVE,
    )
    eval_sample_tokens: int = doc(100, "Length of each evaluation sample, in tokens.", check=POSITIVE)
    eval_tasks: list[str] = doc(
        [],
        "Benchmarks scored at every evaluation and logged as eval/<task>/acc and eval/<task>/acc_norm: "
        "'hellaswag' (the hub's Rowan/hellaswag validation split, through datasets) or 'hellaswag=FILE' "
        "(a local jsonl in the release format). See gpt.hellaswag.",
    )
    eval_task_limit: int = doc(
        1000,
        "Items of each eval_tasks benchmark scored at each evaluation (the first N); 0: every item.",
        check=NON_NEGATIVE,
    )
    checkpoint_interval: int = doc(
        1000, "Save a resumable checkpoint every this many steps (and at the end).", check=POSITIVE
    )
    keep_last: int = doc(2, "Number of most recent checkpoints to keep; older ones are deleted.", check=POSITIVE)
    keep_best: bool = doc(
        False, "Also keep the checkpoint with the lowest val loss (named in checkpoints/best), whatever its age."
    )
    time_budget_s: float = doc(
        0.0,
        "Wall-clock budget in seconds, counted from the trainer's start (with a resumed run's earlier time): "
        "training ends when it is spent (or at max_steps), and the learning-rate decay follows elapsed time "
        "instead of steps. 0: no budget.",
        check=NON_NEGATIVE,
    )
    collective_timeout_s: float = doc(
        600.0,
        "Seconds a process waits in an operation with the others (gradient all-reduce, barrier) before the job "
        "ends with an error naming the ranks that did not answer: a stalled process stops the job instead of "
        "hanging it. Raise it if one process can be busy alone for longer (preparing a large data set).",
        check=POSITIVE,
    )
    optimizer: Literal["adamw", "muon"] = doc(
        "adamw", "'adamw', or 'muon': Muon for the blocks' 2-D weight matrices and AdamW for everything else."
    )
    muon_lr: float = doc(0.02, "Muon's peak learning rate (the schedule scales it like learning_rate).", check=POSITIVE)
    muon_momentum: float = doc(0.95, "Muon's momentum (Nesterov).", check=PROBABILITY)


@dataclass
class TrackingConfig:
    """Where metrics go besides out_dir/metrics.jsonl (always written), through accelerate's trackers."""

    loggers: list[str] = doc(
        ["wandb"],
        "Experiment trackers, comma-separated: any of accelerate's (wandb, tensorboard, mlflow, trackio, aim, "
        "comet_ml, clearml, dvclive, swanlab), each needing its package; the wandb.* keys configure W&B, and "
        "the others write under out_dir/tracking/. Empty: metrics.jsonl only.",
    )


@dataclass
class WandbConfig:
    """Weights & Biases logging (only the main process talks to W&B)."""

    mode: Literal["auto", "online", "offline", "disabled"] = doc(
        "auto",
        "'auto': online when credentials are present, else offline (sync later with `wandb sync`). "
        "WANDB_MODE, when set, wins over 'auto'.",
    )
    project: str = doc("", "W&B project; empty uses WANDB_PROJECT, else 'gpt'.")
    entity: str = doc("", "W&B entity (user or team); empty uses WANDB_ENTITY, else your default.")
    name: str = doc("", "Run name; empty uses WANDB_NAME, else the out_dir's folder name.")
    group: str = doc("", "Run group, e.g. to gather a sweep; empty uses WANDB_RUN_GROUP.")
    tags: list[str] = doc([], "Run tags, comma-separated on the command line; empty uses WANDB_TAGS.")
    notes: str = doc("", "Free-text notes for the run; empty uses WANDB_NOTES.")
    init_timeout_s: float = doc(
        30.0,
        "Seconds to wait for W&B to start an online run (counted after wandb's own start-up and login check); "
        "when it does not answer in time (no network), the run continues offline and prints how to upload it "
        "later.",
        check=POSITIVE,
    )
    log_model: bool = doc(
        False,
        "At the end of training, upload the final exported model (checkpoints/step-N/model/) as a W&B "
        "artifact of type 'model'.",
    )


@dataclass
class Config:
    """A training run."""

    out_dir: str = doc(
        "out/default", "Run directory: checkpoints, exported model, metrics, W&B files.", check=NON_EMPTY
    )
    seed: int = doc(1337, "Seed for initialisation, data order and dropout.", check=SEED)
    resume: Literal["auto", "true", "false"] = doc(
        "auto",
        "'auto': continue from the newest complete checkpoint in out_dir if there is one; 'true': "
        "require one; 'false': start fresh (refused if out_dir already holds checkpoints).",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class SampleConfig:
    """Text generation from a trained model (sample.py)."""

    out_dir: str = doc(
        "out/default",
        "Run directory to sample from (its newest checkpoint), or a checkpoint or model folder.",
        check=NON_EMPTY,
    )
    start: str = doc(
        "",
        "Prompt text, or FILE:path to read it from a file; empty: a newline (or, for a vocabulary without one, "
        "end-of-text or its first token).",
    )
    num_samples: int = doc(3, "Number of samples, generated together as one batch.", check=POSITIVE)
    max_new_tokens: int = doc(
        500,
        "Tokens to generate per sample; a sample of a BPE model stops earlier at end-of-text.",
        check=NON_NEGATIVE,
    )
    temperature: float = doc(0.8, "Softmax temperature; 0 picks the most likely token (greedy).", check=NON_NEGATIVE)
    top_k: int = doc(0, "Sample only from the k most likely tokens; 0 disables.", check=NON_NEGATIVE)
    top_p: float = doc(
        1.0, "Nucleus sampling: the smallest set of tokens whose probability reaches p; 1 disables.", check="(0, 1]"
    )
    seed: int = doc(1337, "Random seed; the same seed gives the same samples.", check=SEED)
    context_mode: Literal["auto", "exact", "fast", "rolling"] = doc(
        "auto",
        "Past the context length: 'exact' re-fills the key/value cache from the last block_size tokens at "
        "every step (the same tokens as decoding without a cache, one full forward pass per token); 'fast' "
        "drops the oldest half of the window and re-fills once per half window (much faster, but the model "
        "then sees between block_size/2 + 1 and block_size tokens, so samples differ from 'exact' past the "
        "context length); 'rolling' (rotary models only) keeps every cached key and value and lets each new "
        "token replace the oldest, one cheap step per token: every layer attends to the last block_size "
        "tokens with their true distances (for one layer the same as 'exact'; deeper, the cached states "
        "also carry older context). 'auto': 'rolling' for rotary models, else 'exact'.",
    )
    device: str = doc("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "auto",
        "Weights and activations dtype; 'auto' is bfloat16 on a GPU with native bf16 (Ampere or newer), "
        "float16 on an older GPU, float32 on CPU.",
    )


@dataclass
class ServeConfig:
    """An OpenAI-compatible completions server (python -m gpt.serve)."""

    out_dir: str = doc(
        "out/default", "Model to serve: a run directory (its newest checkpoint), a checkpoint or a model folder."
    )
    host: str = doc(
        "127.0.0.1",
        "Address to listen on. Loopback (the default) is reachable from this machine only; anything else "
        "(0.0.0.0, a LAN address) lets other machines use the model, and the server has no authentication.",
    )
    port: int = doc(8000, "TCP port to listen on.")
    model_name: str = doc(
        "",
        "Name the API serves the model under (GET /v1/models, a request's 'model'); empty: the out_dir folder's name.",
    )
    max_batch: int = doc(
        16,
        "Most sequences decoded at a time, over all requests (a request with n samples counts n); also the "
        "largest n a request may ask for. More requests wait in arrival order.",
    )
    max_batches: int = doc(
        2,
        "Most batches decoded in turns (each holds requests whose prompts have one length in tokens). A "
        "request that cannot start a batch waits for one to end, then starts with the others that waited: "
        "1 gives the largest batches (throughput), more let new requests start sooner (latency).",
    )
    max_tokens: int = doc(2048, "Largest max_tokens a request may ask for.")
    context_mode: Literal["auto", "exact", "fast", "rolling"] = doc(
        "auto",
        "Past the context length, as sample.py's --context_mode: 'auto' is 'rolling' for rotary models, else 'exact'.",
    )
    device: str = doc("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "auto", "Weights and activations dtype; 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    cpu_threads: int = doc(
        0,
        "Threads for the model on CPU; 0: torch's default (one per core). Fewer is faster for small models on "
        "a machine that is busy with other work.",
    )


@dataclass
class EvalConfig:
    """A full evaluation pass over one split (python -m gpt.evaluate)."""

    out_dir: str = doc(
        "out/default",
        "Model to evaluate: a run directory (its newest checkpoint), a checkpoint or a model folder.",
        check=NON_EMPTY,
    )
    data: str = doc(
        "",
        "Dataset folder holding <split>.tok (or <split>-*.tok shards); empty: the dataset the run was trained "
        "on, as named in its checkpoint (data.root/data.dataset, relative to the current directory). With "
        "--task: the task's local jsonl.",
    )
    split: str = doc(
        "val", "Split to evaluate: 'val', 'train', or any <split> with token files in the folder.", check=NON_EMPTY
    )
    batch_size: int = doc(8, "Windows of block_size tokens per forward pass, per process.", check=POSITIVE)
    mixed_precision: Literal["no", "bf16", "fp16"] = doc(
        "no", "Autocast precision through accelerate: 'no', 'bf16' (CPU and GPU) or 'fp16' (GPU only)."
    )
    json: str = doc(
        "",
        "Where to write the results as JSON; empty: eval-<split>.json (hellaswag.json, lm_eval.json) in the run "
        "directory (in the model folder when it is not part of a run).",
    )
    task: str = doc(
        "",
        "Score a benchmark instead of the loss pass: 'hellaswag' (acc and acc_norm over the validation items; "
        "--data FILE.jsonl for a local copy in the release format, else the hub's Rowan/hellaswag).",
    )
    limit: int = doc(0, "With --task or --lm_eval: score only the first N items of each task; 0: every item.")
    lm_eval: str = doc(
        "",
        "Run lm-evaluation-harness tasks on the model (comma-separated names, e.g. hellaswag,lambada_openai; "
        "needs the eval extra) and print and save lm_eval's results.",
    )
    include_path: str = doc("", "With --lm_eval: a folder of extra task YAML files for lm_eval to find.")


# ----------------------------------------------------------------------------------------------
# Reading presets and overrides


def _is_section(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if get_origin(tp) in (Union, UnionType):
        return "|".join(_type_name(member) for member in get_args(tp))
    if get_origin(tp) is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"list[{get_args(tp)[0].__name__}]"
    return getattr(tp, "__name__", str(tp))


def _convert(key: str, value: Any, tp: Any, from_cli: bool) -> Any:
    """Check or convert one value to the field's type, with one clear error when it doesn't fit."""

    def fail(expected: str) -> UserError:
        what = "flag" if key.startswith("--") else "config key"
        return UserError(f"{what} '{key}' expects {expected}, got {value!r}")

    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value is False and "no" in choices:  # YAML reads a bare `no` as false
            return "no"
        if str(value).lower() in [str(c) for c in choices]:
            return str(value).lower()
        raise fail("one of " + ", ".join(repr(c) for c in choices))
    if origin is list:
        (item_tp,) = get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise fail("a list")
        return [_convert(key, v, item_tp, from_cli) for v in value]
    if origin in (Union, UnionType):  # e.g. int | Literal["auto"]: the first member that takes the value
        for member in get_args(tp):
            try:
                return _convert(key, value, member, from_cli)
            except UserError:
                pass
        raise fail(" or ".join("an integer" if m is int else _type_name(m).replace("|", ", ") for m in get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise fail("true or false")
    if tp is int:
        if isinstance(value, bool):
            raise fail("an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise fail("an integer")
    if tp is float:
        if isinstance(value, bool):
            raise fail("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if from_cli:
            return str(value)
        raise fail("a string")
    raise TypeError(f"unsupported config type {tp} for {key}")


def _fields(section: Any) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(type(section))
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(section)}


def _set(cfg: Config, dotted: str, value: Any, from_cli: bool) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = _fields(node)
        prefix = ".".join(parts[:depth])
        if part not in fields:
            known = [f"{prefix}.{n}" if prefix else n for n in fields]
            close = difflib.get_close_matches(dotted, _all_keys(), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "valid keys here: " + ", ".join(known)
            raise UserError(f"unknown config key '{dotted}': {hint} (see train.py --help)")
        _, tp = fields[part]
        last = depth == len(parts) - 1
        if _is_section(tp):
            if last:
                if not isinstance(value, dict):
                    raise UserError(f"config key '{dotted}' is a section; set its keys, e.g. {dotted}.KEY=VALUE")
                for sub_key, sub_value in value.items():
                    _set(cfg, f"{dotted}.{sub_key}", sub_value, from_cli)
                return
            node = getattr(node, part)
        else:
            if not last:
                raise UserError(f"unknown config key '{dotted}': '{'.'.join(parts[: depth + 1])}' is not a section")
            setattr(node, part, _convert(dotted, value, tp, from_cli))


def _all_keys(section: Any = None, prefix: str = "") -> list[str]:
    section = Config() if section is None else section
    keys = []
    for name, (_, tp) in _fields(section).items():
        if _is_section(tp):
            keys += _all_keys(getattr(section, name), f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def find_preset(name: str) -> Path:
    """A preset by path (``configs/x.yaml``) or by name (``x``), looked up in ``configs/``."""
    candidates = [Path(name)] + [d / f"{name}.yaml" for d in PRESET_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"no config preset '{name}': give a YAML path or one of {', '.join(preset_names())}")


def preset_names() -> list[str]:
    """The presets that ``find_preset`` finds by name."""
    return sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def train_command(out_dir: str | Path) -> str:
    """The train.py command whose run writes to ``out_dir``: the preset whose out_dir it is, else an override."""
    if Path(out_dir) == Path(Config().out_dir):
        return "python train.py"
    for name in preset_names():
        try:
            preset = yaml.safe_load(find_preset(name).read_text())
        except yaml.YAMLError:
            continue
        if isinstance(preset, dict) and Path(str(preset.get("out_dir", ""))) == Path(out_dir):
            return f"python train.py {name}"
    return f"python train.py out_dir={out_dir}"


def load_config(args: list[str]) -> Config:
    """Build a Config from ``[PRESET] [key.sub=value ...]``: defaults, then the preset, then overrides."""
    cfg = Config()
    overrides = []
    for i, arg in enumerate(args):
        if "=" in arg:
            key, value = arg.split("=", 1)
            overrides.append((key.strip().lstrip("-"), value))
        elif i == 0:
            path = find_preset(arg)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise UserError(f"config preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
            except UnicodeDecodeError as e:
                raise UserError(
                    f"config preset {path} is not UTF-8 (byte offset {e.start}); save it as UTF-8"
                ) from None
            except OSError as e:
                raise UserError(f"cannot read config preset {path}: {e.strerror}") from None
            if not isinstance(data, dict):
                raise UserError(f"config preset {path} must be a mapping of keys to values")
            for key, value in data.items():
                _set(cfg, key, value, from_cli=False)
        else:
            raise UserError(f"unexpected argument '{arg}': overrides look like key.sub=value (see --help)")
    for key, value in overrides:
        _set(cfg, key, _parse_override(value), from_cli=True)
    validate(cfg)
    check_folder(cfg.out_dir, "out_dir")
    check_folder(cfg.data.root, "data.root", writable=False)  # a read-only store of prepared data is fine
    return cfg


def _parse_override(value: str) -> Any:
    """A command-line value as YAML, except that only true/false are booleans: YAML 1.1 would also
    read no/yes/on/off as booleans, turning train.mixed_precision=no or out_dir=on into False/True."""
    if not value.strip():
        return ""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value  # not YAML (e.g. an unbalanced bracket): the text itself
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        return value.strip()
    return parsed


def validate(cfg: Config) -> None:
    """Every field against its declared rule (``check_fields``), then the checks across fields."""
    check_fields(cfg)
    m, t = cfg.model, cfg.train
    if t.micro_batch_size != "auto" and t.micro_batch_size <= 0:
        raise UserError(f"config key 'train.micro_batch_size' must be positive or auto, got {t.micro_batch_size}")
    if m.n_embd % m.n_head:
        raise UserError(f"model.n_embd ({m.n_embd}) must be divisible by model.n_head ({m.n_head})")
    if t.micro_batch_size != "auto" and t.batch_size % t.micro_batch_size:
        raise UserError(
            f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size ({t.micro_batch_size})"
        )
    if t.min_lr > t.learning_rate:
        raise UserError(
            f"train.min_lr ({t.min_lr}) must not exceed train.learning_rate ({t.learning_rate}): the schedule "
            "decays from learning_rate to min_lr"
        )
    if m.init_from and m.kind != "gpt":
        raise UserError(f"model.init_from loads a GPT-2 and needs model.kind=gpt, got model.kind={m.kind}")
    if m.position == "rope" and (m.n_embd // m.n_head) % 2:
        raise UserError(
            f"model.position=rope needs an even head size, got n_embd / n_head = {m.n_embd // m.n_head}; "
            "change model.n_embd or model.n_head"
        )


def resume_changes(saved: dict[str, Any], cfg: Config) -> str | None:
    """One line naming the settings that differ from those a resumed checkpoint was trained with
    (``saved``: its config as a dict), or None. The architecture is not compared: a change there
    cannot resume at all (gpt.checkpoint.check_same_model)."""
    before, now = _flatten(saved), _flatten(to_dict(cfg))
    ignored = ("out_dir", "resume")  # where the run is and how it was asked to continue, not how it trains
    changed = [k for k in now if k in before and k not in ignored and before[k] != now[k]]
    if not changed:
        return None
    return "resuming with changed settings: " + ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in changed)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (for YAML, JSON and W&B)."""
    return dataclasses.asdict(cfg)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from a checkpoint's JSON, refusing unknown fields."""
    cfg = ModelConfig()
    for key, value in data.items():
        try:
            _set_section(cfg, key, value, "model.")
        except UserError as e:
            raise UserError(f"{e} (in a saved model config)") from None
    return cfg


def _set_section(section: Any, key: str, value: Any, prefix: str) -> None:
    fields = _fields(section)
    if key not in fields:
        raise UserError(f"unknown config key '{prefix}{key}'")
    setattr(section, key, _convert(f"{prefix}{key}", value, fields[key][1], from_cli=isinstance(value, str)))


def parse_flags(section_type: type, argv: list[str], prog: str, description: str) -> Any:
    """Parse ``--name value`` flags into a dataclass, the ``--help`` text coming from the field docs."""
    import argparse

    from gpt.errors import ArgumentParser

    defaults = section_type()
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (f, tp) in _fields(defaults).items():
        parser.add_argument(
            f"--{name}", default=None, metavar=_type_name(tp).upper(),
            help=f"{f.metadata['doc']} (default: {getattr(defaults, name)!r})",
        )  # fmt: skip
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if value is not None:
            _set_section(defaults, name, value, prefix="--")
    check_fields(defaults, prefix="--")
    return defaults


# ----------------------------------------------------------------------------------------------
# Documentation generated from the dataclasses


def reference_rows(section: Any = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every config key, in declaration order."""
    section = Config() if section is None else section
    rows = []
    for name, (f, tp) in _fields(section).items():
        value = getattr(section, name)
        if _is_section(tp):
            rows += reference_rows(value, f"{prefix}{name}.")
        else:
            shown = ",".join(value) if isinstance(value, list) else value
            check = f.metadata.get("check")
            type_name = f"{_type_name(tp)}, {describe(check)}" if check else _type_name(tp)
            rows.append((prefix + name, type_name, repr(shown), f.metadata["doc"]))
    return rows


def help_text(program: str, cfg: Config | None = None) -> str:
    """Usage, the presets and every key with its meaning: with its default, or its value in ``cfg``."""
    lines = [
        f"usage: {program} [PRESET] [key.sub=value ...]",
        "",
        f"PRESET is a YAML file or the name of one in configs/: {', '.join(preset_names())}.",
        "Keys and defaults (a preset overrides defaults, command-line overrides win over both):"
        if cfg is None
        else "Keys and their values in this config:",
        "",
    ]
    for key, tp, value, text in reference_rows(cfg):
        lines.append(f"  {key} ({tp}, {'default' if cfg is None else 'value'} {value})")
        lines.append(f"      {text}")
    return "\n".join(lines)


def markdown_table() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, text in reference_rows():
        escaped_type = tp.replace("|", " \\| ")
        rows.append(f"| `{key}` | {escaped_type} | `{default}` | {text} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if "--markdown" in argv:
        print(markdown_table())
    elif argv and not any(a in ("-h", "--help") for a in argv):
        print(help_text("python -m gpt.config", load_config(argv)))
    else:
        print(__doc__)
        print(help_text("python -m gpt.config"))
    return 0


if __name__ == "__main__":
    run_main(main)
