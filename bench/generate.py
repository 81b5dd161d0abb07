"""Generation speed with and without the key/value cache, on the shakespeare_char model shape.

    flock -x /tmp/cpu.lock python bench/generate.py --group inside     # 250 new tokens, cache vs none
    flock -x /tmp/cpu.lock python bench/generate.py --group past       # 500 new tokens: exact, fast, none
    flock -x /tmp/cpu.lock python bench/generate.py --group prefill    # time to first token, long prompt
    flock -x /tmp/cpu.lock python bench/generate.py --group rotary     # the same shape with rotary positions
    flock -x /tmp/cpu.lock python bench/generate.py --group options    # cached, 250: threads and bf16 side by side
    python bench/generate.py --help

The model has the shape of configs/shakespeare_char.yaml (6 layers, 6 heads, 384 wide, context 256,
vocabulary 65) with randomly initialised weights: speed and memory depend on the shape, not on the
values ("rotary": the same shape with model.position=rope). It is written as a portable export and
loaded the way sample.py loads it. Each case runs in a fresh process, 10 samples as one batch,
temperature 0.8, prompt "\\n" (one token; "prefill" uses a 255-token prompt).
Cases of a group run interleaved, --repeats times; the table shows medians.

Columns: new tokens/s (10 x new tokens / generation time), the generation time, time to first token
from the call (prompt encoding, the prompt's forward pass, the first draw) and from the process
start (Python and torch imports, loading the model, then the same), the resident memory before
generating and its peak (ru_maxrss) over the process.

The share of the machine's limit (gpt/roofline.py). Every forward pass of a case is recorded (cached
positions before it, new positions, with a cache or not); from the model config each one's bytes
(weights, plus the keys and values it reads back from the cache) and FLOPs (its matmuls and
attention) are counted. The limit of a pass is the larger of bytes / bandwidth and FLOPs /
throughput; "limit s" sums it over the passes of the run and "share of limit" is that over the
generation time. Bandwidth and throughput are measured on this machine by this script, in a separate
process at the start of every round (so with the machine as loaded as the cases find it), with
torch's default threads, and the best of all rounds is used: read bandwidth, a sum over a 1 GiB
float32 buffer (far bigger than any CPU cache), best of 5; matmul throughput in each dtype the
cases use, F.linear as nn.Linear calls it, of a 2048 x 2048 x 2048 product and of the decode shape
(10 x 384 by 1536 x 384, the MLP's first matmul), best of 5 batches of about 1 GFLOP; the larger is
the limit.

What the kernels allow: "matmuls alone s" is the number of forward passes of the case times one
decode step's matrix products timed on their own (gpt.roofline.decode_matmul_seconds: F.linear of 10
rows by every weight matrix of the model's shape, each its own tensor, so read from memory as decoding
reads them; best of 5, default threads). "share at most" is the limit over that time: the share a
decoder built on torch's F.linear would reach if attention, norms, sampling and Python cost nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    new_tokens: int
    use_cache: bool = True
    mode: str = "exact"  # past-context mode
    prompt_len: int = 1
    position: str = "learned"
    dtype: str = "float32"  # of the weights, activations and cache
    threads: int = 0  # torch threads in the worker; 0: torch's default (one per core)


CASES = {
    "no cache, 250": Case(250, use_cache=False),
    "cache, 250": Case(250),
    "no cache, 500": Case(500, use_cache=False),
    "cache exact, 500": Case(500),
    "cache fast, 500": Case(500, mode="fast"),
    "no cache, 255-token prompt": Case(1, use_cache=False, prompt_len=255),
    "cache, 255-token prompt": Case(1, prompt_len=255),
    "rotary: no cache, 500": Case(500, use_cache=False, position="rope"),
    "rotary: cache exact, 500": Case(500, position="rope"),
    "rotary: cache rolling, 500": Case(500, mode="rolling", position="rope"),
    "cache, 250, 1 thread": Case(250, threads=1),
    "cache, 250, bf16": Case(250, dtype="bfloat16"),
    "cache, 250, bf16, 1 thread": Case(250, dtype="bfloat16", threads=1),
}
GROUPS = {
    "inside": ["no cache, 250", "cache, 250"],
    "past": ["no cache, 500", "cache exact, 500", "cache fast, 500"],
    "prefill": ["no cache, 255-token prompt", "cache, 255-token prompt"],
    "rotary": ["rotary: no cache, 500", "rotary: cache exact, 500", "rotary: cache rolling, 500"],
    "options": ["cache, 250", "cache, 250, 1 thread", "cache, 250, bf16", "cache, 250, bf16, 1 thread"],
}
NUM_SAMPLES = 10


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(name: str, export: str, started: float) -> None:
    """One case in this process; prints one JSON line."""
    import torch

    from gpt.generate import load, sample_ids

    case = CASES[name]
    if case.threads:
        torch.set_num_threads(case.threads)
    model, tokenizer, _ = load(export, device="cpu", dtype=case.dtype)
    passes = record_passes(model)
    text = (Path(__file__).resolve().parent.parent / "gpt/assets/tinyshakespeare.txt").read_text()
    prompt = tokenizer.encode(text[: case.prompt_len])
    rss_before = rss_mib()
    t0 = time.perf_counter()
    first = None
    steps = 0
    for _ in sample_ids(
        model, prompt, case.new_tokens, NUM_SAMPLES, temperature=0.8, seed=1337, context_mode=case.mode,
        use_cache=case.use_cache,
    ):  # fmt: skip
        if first is None:
            first = time.perf_counter()
            first_wall = time.time()
        steps += 1
    seconds = time.perf_counter() - t0
    assert steps == case.new_tokens  # no end-of-text in a char vocabulary: every step ran
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    record = {
        "case": name,
        "tokens_per_s": NUM_SAMPLES * case.new_tokens / seconds,
        "seconds": seconds,
        "ttft_ms": 1000 * (first - t0),
        "ttft_from_start_s": first_wall - started,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "threads": torch.get_num_threads(),
        "passes": passes,
    }
    print(json.dumps(record), flush=True)


def record_passes(model) -> list[tuple[int, int, bool]]:
    """Every forward pass the model runs from now on, as (cached positions before it, new positions,
    with a cache): what the roofline counts. Wraps the instance's forward."""
    passes: list[tuple[int, int, bool]] = []
    forward = model.forward

    def recorded(idx, *args, cache=None, **kwargs):
        passes.append((cache.pos if cache is not None else 0, idx.size(1), cache is not None))
        return forward(idx, *args, cache=cache, **kwargs)

    model.forward = recorded
    return passes


def measure_machine(dtypes: list[str]) -> dict[str, float]:
    """The machine's limits, measured now with torch's default threads (see the module doc)."""
    import torch

    from gpt.roofline import decode_matmul_seconds, matmul_throughput, memory_bandwidth

    cfg, _ = bench_model("learned")  # the matrices do not depend on the positions
    found = {"bandwidth": memory_bandwidth()}
    for dtype in dtypes:
        found[f"square {dtype}"] = matmul_throughput(2048, 2048, 2048, getattr(torch, dtype))
        found[f"decode {dtype}"] = matmul_throughput(NUM_SAMPLES, cfg.n_embd, 4 * cfg.n_embd, getattr(torch, dtype))
        found[f"step matmuls s {dtype}"] = decode_matmul_seconds(cfg, NUM_SAMPLES, getattr(torch, dtype))
    return found


def limit_seconds(passes: list, dtype: str, machine: dict[str, float], cfg) -> float:
    """The roofline time of these forward passes on this machine: the sum over passes of the larger of
    bytes / bandwidth and FLOPs / the best matmul throughput measured in that dtype."""
    import torch

    from gpt import roofline

    size = getattr(torch, dtype).itemsize
    throughput = max(machine[f"square {dtype}"], machine[f"decode {dtype}"])
    costs = (roofline.pass_cost(cfg, NUM_SAMPLES, past, new, size, cached) for past, new, cached in passes)
    return sum(roofline.limit_seconds(c, machine["bandwidth"], throughput) for c in costs)


def bench_model(position: str):
    """The shakespeare_char model config with these positions and Shakespeare's characters: (config, tokenizer)."""
    from gpt.config import load_config
    from gpt.tokenizer import ASSETS, CharTokenizer

    tokenizer = CharTokenizer.from_text((ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    cfg = load_config(["shakespeare_char"]).model
    cfg.vocab_size, cfg.position = tokenizer.vocab_size, position
    return cfg, tokenizer


def make_export(folder: Path, position: str):
    """A random-init model of the shakespeare_char shape as a portable export: (its folder, its config)."""
    import torch

    from gpt.checkpoint import save_weights, write_export
    from gpt.model import build_model

    cfg, tokenizer = bench_model(position)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    save_weights(model.state_dict(), folder / "weights.safetensors")
    write_export(folder / "model", folder / "weights.safetensors", cfg, tokenizer, {"step": 0})
    return folder / "model", cfg


def run_measure(dtypes: list[str]) -> dict[str, float]:
    """measure_machine in its own process: its 1 GiB buffer must not count in the cases' peak RSS."""
    cmd = [sys.executable, __file__, "--measure", ",".join(dtypes)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(out.stdout.strip(), file=sys.stderr, flush=True)  # progress, as each result comes
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(case: str, exports: dict[str, Path]) -> dict:
    export = exports[CASES[case].position][0]
    started = time.time()
    cmd = [sys.executable, __file__, "--worker", case, "--export", str(export), "--started", repr(started)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(out.stdout.strip()[:300], file=sys.stderr, flush=True)  # progress, as each result comes
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=list(GROUPS), default="inside")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_machine(args.measure.split(","))), flush=True)
        return
    if args.worker:
        worker(args.worker, args.export, args.started)
        return

    cases = GROUPS[args.group]
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    machines: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        positions = {CASES[c].position for c in cases}
        exports = {p: make_export(Path(tmp) / p, p) for p in positions}
        for _ in range(args.repeats):
            machines.append(run_measure(sorted({CASES[c].dtype for c in cases})))
            for case in cases:  # interleaved, so slow drift of the machine hits every case alike
                runs[case].append(run_case(case, exports))
    best = {k: min if k.startswith("step matmuls") else max for k in machines[0]}  # seconds: the least
    machine = {k: best[k](m[k] for m in machines) for k in machines[0]}  # the best of every round's measure
    report(args.group, cases, runs, machine, {p: cfg for p, (_, cfg) in exports.items()})


def report(group: str, cases: list[str], runs: dict[str, list[dict]], machine: dict[str, float], cfgs) -> None:
    """The markdown table of medians, the machine's limits and the share of them each case reached."""
    repeats = len(runs[cases[0]])
    print(f"{group}: {NUM_SAMPLES} samples as one batch, median of {repeats} runs each, "
          f"{runs[cases[0]][0]['threads']} torch threads unless the case says")  # fmt: skip
    print(
        f"machine (best of {repeats} rounds): read bandwidth {machine['bandwidth'] / 1e9:.1f} GB/s; matmul "
        + "; ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in machine.items() if k.startswith(("square", "decode")))
    )
    import torch

    from gpt.roofline import weight_count

    cfg = next(iter(cfgs.values()))
    for dtype in sorted({CASES[c].dtype for c in cases}):
        seconds = machine[f"step matmuls s {dtype}"]
        weight_bytes = weight_count(cfg) * getattr(torch, dtype).itemsize
        rate = weight_bytes / seconds
        print(
            f"one decode step's matrix products alone, {dtype}: {seconds * 1e3:.2f} ms, {weight_bytes / 1e6:.0f} MB "
            f"of weights at {rate / 1e9:.1f} GB/s ({rate / machine['bandwidth']:.0%} of the read bandwidth)"
        )
    print(
        "| case | new tokens/s | generation s | limit s | share of limit | matmuls alone s | share at most "
        "| first token ms | first token from start s | RSS MiB | peak RSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    numbers = [k for k in runs[cases[0]][0] if k not in ("case", "passes")]
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in numbers} for c in cases}
    for c in cases:
        m, case = med[c], CASES[c]
        limit = limit_seconds(runs[c][0]["passes"], case.dtype, machine, cfgs[case.position])
        floor = "| - | - "  # without a cache every pass multiplies a whole window of rows: no one-step floor
        if case.use_cache:  # a prefill counted as one step: the bound errs high
            matmuls = len(runs[c][0]["passes"]) * machine[f"step matmuls s {case.dtype}"]
            floor = f"| {matmuls:.2f} | {limit / matmuls:.0%} "
        print(
            f"| {c} | {m['tokens_per_s']:,.0f} | {m['seconds']:.2f} | {limit:.2f} | {limit / m['seconds']:.0%} "
            f"{floor}| {m['ttft_ms']:.1f} | {m['ttft_from_start_s']:.2f} | {m['rss_before_mib']:.0f} "
            f"| {m['peak_rss_mib']:.0f} |"
        )
    baseline = next((c for c in cases if "no cache" in c), cases[0])
    for c in cases:
        if c != baseline:
            speed = med[c]["tokens_per_s"] / med[baseline]["tokens_per_s"]
            first = med[c]["ttft_ms"] / med[baseline]["ttft_ms"]
            if CASES[c].new_tokens > 1:
                print(f"{c} vs {baseline}: {speed:.2f}x the new tokens/s; first token in {first:.2f}x the time")
            else:  # one new token: only the time to the first token means anything
                print(f"{c} vs {baseline}: first token in {first:.2f}x the time")
    print(
        "all runs, new tokens/s: "
        + "; ".join(f"{c}: " + ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs[c]) for c in cases)
    )


if __name__ == "__main__":
    main()
