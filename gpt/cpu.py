"""Whether this CPU computes bf16 natively, and the training precision that follows from it.

bf16 autocast pays on a CPU that has bf16 instructions (AVX512-BF16, or AMX on Sapphire Rapids and
newer): matmuls run at up to twice the fp32 rate. Elsewhere (AVX2, most laptops and small cloud VMs)
bf16 is emulated and a training step can be many times slower than in fp32. So bf16 on CPU is
checked before training starts:
the CPU's flags decide when they name a bf16 instruction set; otherwise a tiny bf16 and fp32 matmul
are timed (a few milliseconds to a fraction of a second). Where bf16 is slower, training falls back to
fp32 and says so in one line; ``train.cpu_bf16=always`` keeps bf16 anyway (its numerics, not its speed).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

# /proc/cpuinfo flags of instruction sets that compute bf16, and their names
BF16_FLAGS = {"avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}
SLOWDOWN_LIMIT = 1.5  # bf16 this much slower than fp32 in the timed matmul: emulated, not worth it


@dataclass
class Bf16Support:
    native: bool
    reason: str  # for the log line: which instructions, or the measured slowdown


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_matmul_slowdown(size: int = 256, repeats: int = 3) -> float:
    """Time of a bf16 matmul over that of the same fp32 matmul on this CPU (best of ``repeats``)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # the first call may set up kernels
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) / best(a, b)


def bf16_support(flags: set[str] | None = None, measure: Callable[[], float] = bf16_matmul_slowdown) -> Bf16Support:
    """Whether bf16 is native here: from the CPU flags when they name a bf16 instruction set, else measured."""
    flags = cpu_flags() if flags is None else flags
    named = [name for flag, name in BF16_FLAGS.items() if flag in (flags or ())]
    if named:
        return Bf16Support(True, f"{' and '.join(named)}")
    slowdown = measure()
    native = slowdown < SLOWDOWN_LIMIT
    return Bf16Support(native, f"a bf16 matmul takes {slowdown:.1f}x the time of fp32 here")


def training_precision(
    mixed_precision: str, cpu_bf16: str, on_cpu: bool, support: Callable[[], Bf16Support] | None = None
) -> tuple[str | None, str]:
    """The mixed precision to hand to accelerate (None: the launch's) and a line to print ('' for none).

    ``mixed_precision`` is train.mixed_precision ('auto': the launch's, ACCELERATE_MIXED_PRECISION). bf16
    on a CPU without native bf16 becomes 'no' (fp32), unless ``cpu_bf16`` is 'always'.
    """
    passed = None if mixed_precision == "auto" else mixed_precision
    requested = os.environ.get("ACCELERATE_MIXED_PRECISION", "no") if passed is None else passed
    if requested != "bf16" or not on_cpu:
        return passed, ""
    found = (support or bf16_support)()
    if found.native:
        return passed, ""
    if cpu_bf16 == "always":
        return passed, f"bf16 kept (train.cpu_bf16=always) on {cpu_model()}, which has no native bf16: {found.reason}"
    return "no", (
        f"mixed precision bf16 -> fp32: {cpu_model()} has no native bf16 (AVX512-BF16 or AMX), and {found.reason}; "
        "train.cpu_bf16=always keeps bf16"
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
