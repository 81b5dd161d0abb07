"""bf16 on a CPU: which parts of the model run in it, chosen by the hardware and by timing.

bf16 autocast pays on a CPU that has bf16 instructions (AVX512-BF16, or AMX on Sapphire Rapids and
newer): matmuls run at up to twice the fp32 rate or more. Elsewhere (AVX2, most laptops and small
cloud VMs) bf16 is emulated and a matmul can take several times as long as in fp32 (an LM head of
GPT-2's vocabulary: 6x), so a bf16 training step is many times slower than an fp32 one. Whether bf16
wins also depends on the shape: the LM head (tokens x width by vocabulary x width) is not the
blocks' matmul. So bf16 asked for on a CPU is checked at start-up: a matmul of the blocks' shape and
one of the LM head's shape are timed in bf16 and in fp32 (under a second, once per shape), and

- the blocks lose: training runs in fp32 (decided before accelerate is set up);
- only the LM head loses: the blocks run in bf16, the LM head and loss in fp32 outside autocast;
- neither loses: bf16 throughout.

One line says what was chosen, with the times. ``train.cpu_bf16=always`` keeps bf16 throughout.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

# /proc/cpuinfo flags of instruction sets that compute bf16, and their names
BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}
PROBE_ROWS = 128  # tokens in a timed matmul: enough for the kernels' steady rate, yet a few milliseconds
PROBE_COLUMNS = 4096  # output features at most (a slice of the vocabulary): the time per column does not change
# bf16 loses where it takes more than this times fp32's time. With bf16 instructions, only a clear loss
# counts (a single probe on a busy machine is noisy, and the hardware is there); emulated, any loss
# beyond the noise does.
LOSS_RATIO = {True: 1.5, False: 1.1}

Choice = Literal["bf16", "fp32 head", "fp32"]
CHOICE_SAYS = {
    "bf16": "bf16 throughout",
    "fp32 head": "blocks in bf16, LM head and loss in fp32",
    "fp32": "fp32 throughout",
}


@dataclass(frozen=True)
class Bf16Hardware:
    native: bool  # bf16 instructions in the CPU's flags
    name: str  # for the log line: which instructions, or their absence


@dataclass(frozen=True)
class MatmulTimes:
    """Best time of one matmul (rows x inner) by (outer x inner) in bf16 and in fp32."""

    rows: int
    inner: int
    outer: int
    bf16_ms: float
    fp32_ms: float

    @property
    def ratio(self) -> float:
        """bf16's time over fp32's: above 1, bf16 is slower."""
        return self.bf16_ms / self.fp32_ms

    def __str__(self) -> str:
        return (
            f"{self.rows}x{self.inner} by {self.outer}x{self.inner} bf16 {self.bf16_ms:.2f} ms, "
            f"fp32 {self.fp32_ms:.2f} ms ({self.ratio:.2f}x)"
        )


@functools.cache
def cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags, or None where they cannot be read."""
    flags = cpuinfo("flags")
    return None if flags is None else set(flags.split())


def cpu_model() -> str:
    """The CPU's model name, else what the platform reports."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def bf16_hardware(flags: set[str] | None = None) -> Bf16Hardware:
    """Whether this CPU has bf16 instructions, from its flags. Where they cannot be read (not Linux), it
    counts as not known to have them: the timed matmuls then decide, with the stricter ratio."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return Bf16Hardware(False, "CPU flags unreadable")
    named = [name for flag, name in BF16_FLAGS.items() if flag in flags]
    return Bf16Hardware(bool(named), " and ".join(named) if named else "no AVX512-BF16 or AMX")


@functools.cache
def matmul_times(rows: int, inner: int, outer: int, repeats: int = 5) -> MatmulTimes:
    """Time F.linear of (rows x inner) by (outer x inner) in bf16 and in fp32 (best of ``repeats``
    after a first call that sets up the kernels); once per shape and process."""
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, inner, generator=generator), torch.randn(outer, inner, generator=generator)

    def best_ms(a: torch.Tensor, b: torch.Tensor) -> float:
        F.linear(a, b)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            F.linear(a, b)
            times.append(time.perf_counter() - start)
        return min(times) * 1e3

    return MatmulTimes(rows, inner, outer, best_ms(x.bfloat16(), w.bfloat16()), best_ms(x, w))


def block_times(width: int) -> MatmulTimes:
    """The blocks' largest matmul (the MLP's width -> 4 x width), its output features capped."""
    return matmul_times(PROBE_ROWS, width, min(4 * width, PROBE_COLUMNS))


def head_times(width: int, vocab: int) -> MatmulTimes:
    """The LM head's matmul (width -> vocabulary), a slice of the vocabulary."""
    return matmul_times(PROBE_ROWS, width, min(vocab, PROBE_COLUMNS))


def choose(native: bool, block: MatmulTimes, head: MatmulTimes | None = None) -> Choice:
    """What runs in bf16, from the hardware and the timed matmuls (``head`` None: not known yet).

    The blocks hold most of the work: where bf16 loses there, everything runs in fp32. Where it
    loses only at the LM head, the head (and the loss) runs in fp32."""
    limit = LOSS_RATIO[native]
    if block.ratio > limit:
        return "fp32"
    if head is not None and head.ratio > limit:
        return "fp32 head"
    return "bf16"


def bf16_requested(mixed_precision: str) -> tuple[str | None, bool]:
    """train.mixed_precision for accelerate (None: 'auto', the launch's) and whether it means bf16."""
    passed = None if mixed_precision == "auto" else mixed_precision
    requested = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if passed is None else passed
    return passed, requested == "bf16"


def training_precision(mixed_precision: str, cpu_bf16: str, on_cpu: bool, width: int) -> tuple[str | None, str]:
    """The mixed precision to hand to accelerate (None: the launch's) and a line to print ('' for none).

    ``mixed_precision`` is train.mixed_precision ('auto': the launch's, ACCELERATE_MIXED_PRECISION).
    bf16 on a CPU where the blocks' matmul (``width`` = model.n_embd) is slower in bf16 becomes 'no'
    (fp32), unless ``cpu_bf16`` is 'always'. The LM head is chosen later (``head_precision``).
    Several processes decide by the hardware alone: each would time apart, and could choose apart.
    """
    passed, bf16 = bf16_requested(mixed_precision)
    if not (bf16 and on_cpu):
        return passed, ""
    hardware = bf16_hardware()
    if cpu_bf16 == "always":
        kept = f"bf16 kept (train.cpu_bf16=always) on {cpu_model()}, which has {hardware.name}"
        return passed, "" if hardware.native else kept
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        measured, lost = "", not hardware.native
    else:
        block = block_times(width)
        measured, lost = f": block matmul {block}", choose(hardware.native, block) == "fp32"
    if not lost:
        return passed, ""  # the line comes with the LM head's choice, once the model is built
    return "no", (
        f"mixed precision bf16 -> fp32 on {cpu_model()} ({hardware.name}){measured}; train.cpu_bf16=always keeps bf16"
    )


def cpu_threads(requested: int, local_processes: int) -> int:
    """Threads per process on CPU: as requested, else the physical cores this process may run on,
    shared out over the processes of this machine. accelerate launch sets OMP_NUM_THREADS=1 for a
    CPU run unless told otherwise, which would leave all but one core idle."""
    if requested > 0:
        return requested
    import psutil

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(usable, psutil.cpu_count(logical=False) or usable)
    return max(1, cores // max(1, local_processes))


def head_precision(model: nn.Module, accelerator: Accelerator, cpu_bf16: str) -> str:
    """Where bf16 runs on a CPU, time the LM head's matmul and run the head and loss in fp32
    (``model.fp32_head``) if bf16 loses there; returns the line that says what was chosen ('' where
    nothing was). Call with the built model before ``accelerator.prepare``. Every process takes the
    main process's choice, so that all compute the same thing."""
    on_cpu = accelerator.device.type == "cpu"
    if accelerator.mixed_precision != "bf16" or not on_cpu or cpu_bf16 == "always" or not hasattr(model, "fp32_head"):
        return ""
    hardware = bf16_hardware()
    cfg = model.cfg
    block, head = block_times(cfg.n_embd), head_times(cfg.n_embd, cfg.padded_vocab_size)
    choice = broadcast_object_list([choose(hardware.native, block, head)])[0]
    # "fp32" here: the width came from model.init_from after accelerate was set up in bf16; what
    # can still change is the head, so it is the head that moves to fp32
    model.fp32_head = choice != "bf16"
    chosen = CHOICE_SAYS["fp32 head" if choice == "fp32" else choice]
    return f"CPU bf16 ({hardware.name}): block matmul {block}; LM head matmul {head} -> {chosen}"
