"""Plan a run before launching it: how the global batch splits over the processes, the memory one GPU
needs, and how long a step takes. Needs no GPU and no process group (torch is imported only to read a
built-in dataset's vocabulary).

    python -m gpt.plan shakespeare_char --gpus 8 --gpu h100-80gb
    python -m gpt.plan gpt2_124m_fineweb --gpus 8 --nodes 2 --gpu a100-40gb
    python -m gpt.plan gpt2_124m_fineweb train.micro_batch_size=8 --gpus 4 --gpu l4-24gb --fsdp

It prints the split (processes, micro batch, accumulation steps, tokens per step), the per-GPU memory
by part (weights, gradients, optimizer state, activations per block, logits and loss, an allowance for
the allocator and the CUDA runtime) against the GPU's memory, and the FLOPs per token with the step
time and tokens per day at a stated MFU; its last line is one JSON object. Exit status 0 when the plan
fits, 2 (with one line saying what to change) when it does not. ``train.micro_batch_size=auto``, in
training, chooses the micro batch with the same estimate (``resolve_micro_batch``).

The memory model counts what a training step keeps alive, tensor by tensor, for the trainer as written:
fp32 master weights, gradients and AdamW moments (divided over the processes under FSDP), 16-bit copies
of the weights under autocast, and the activations each operation saves for the backward pass. The
activation terms are checked against the tensors a CPU training step really saves (tests/test_plan.py).
"""

from gpt.plan.estimate import (
    ALLOCATOR_SLACK,
    GIB,
    RUNTIME_GIB,
    Memory,
    accumulation_steps,
    block_activation_bytes,
    choose_micro_batch,
    embedding_and_head_bytes,
    estimate_memory,
    logits_loss_bytes,
    norm_bytes,
    param_count,
    per_process_batch,
    resolve_micro_batch,
)
from gpt.plan.report import (
    GPU_KINDS,
    OPENAI_GPT2,
    GpuKind,
    Plan,
    main,
    make_plan,
    planning_model,
    planning_vocab,
    report,
    what_to_change,
)

__all__ = [
    "ALLOCATOR_SLACK", "GIB", "GPU_KINDS", "OPENAI_GPT2", "RUNTIME_GIB", "GpuKind", "Memory", "Plan",
    "accumulation_steps", "block_activation_bytes", "choose_micro_batch", "embedding_and_head_bytes",
    "estimate_memory", "logits_loss_bytes", "main", "make_plan", "norm_bytes", "param_count", "per_process_batch",
    "planning_model", "planning_vocab", "report", "resolve_micro_batch", "what_to_change",
]  # fmt: skip
