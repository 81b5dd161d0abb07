"""A training run: Config and its sections besides the model (data, optimisation, tracking, W&B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gpt.config.fields import NON_EMPTY, NON_NEGATIVE, POSITIVE, PROBABILITY, SEED, doc
from gpt.config.model import ModelConfig


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
    embed_lr_scale: float = doc(
        1.0,
        "AdamW learning rate of the token (and value) embeddings, as a multiple of the schedule's rate "
        "(modded-nanogpt gives embeddings a much higher rate than the rest).",
        check=POSITIVE,
    )
    head_lr_scale: float = doc(
        1.0, "AdamW learning rate of an untied LM head, as a multiple of the schedule's rate.", check=POSITIVE
    )
    scalar_lr_scale: float = doc(
        1.0,
        "AdamW learning rate of the 0-D and 1-D parameters (norm gains, biases, skip and mixing weights), "
        "as a multiple of the schedule's rate.",
        check=POSITIVE,
    )


@dataclass
class TrackingConfig:
    """Where metrics go besides out_dir/metrics.jsonl (always written), through accelerate's trackers."""

    loggers: list[str] = doc(
        ["wandb"],
        "Experiment trackers, comma-separated: any of accelerate's (wandb, tensorboard, mlflow, trackio, aim, "
        "comet_ml, clearml, dvclive, swanlab), each needing its package; the wandb.* keys configure W&B; "
        "tensorboard and aim write under out_dir/tracking/. Empty: metrics.jsonl only (docs/tracking.md).",
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
