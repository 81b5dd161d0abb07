"""The GPU memory a few training steps of a config really take, as the planner (gpt.plan) counts it.

    python tests/helpers/gpu_peak.py PRESET key=value ...

Runs the trainer's set-up and 3 optimizer steps (``gpt.bench.trainer_runner``, nothing written) and
prints one JSON line: the caching allocator's peak of allocated and of reserved memory, the device
memory used outside it (CUDA context, cuBLAS workspaces) and their sum, the device's peak.
"""

import json
import sys

import torch

from gpt.bench import bench_config, trainer_runner

GIB = 2**30


def main(argv: list[str]) -> None:
    runner = trainer_runner(bench_config(argv))
    runner.run(3)
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    reserved_now = torch.cuda.memory_reserved()
    outside = (total - free) - reserved_now  # the device's use that torch's allocator does not see
    peak_reserved = torch.cuda.max_memory_reserved()
    record = {
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
        "peak_reserved_gib": peak_reserved / GIB,
        "outside_allocator_gib": outside / GIB,
        "device_peak_gib": (peak_reserved + outside) / GIB,
    }
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
