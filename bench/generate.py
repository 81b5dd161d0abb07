"""Generation speed with and without the key/value cache, on the shakespeare_char model shape.

    flock -x /tmp/cpu.lock python bench/generate.py --group inside     # 250 new tokens, cache vs none
    flock -x /tmp/cpu.lock python bench/generate.py --group past       # 500 new tokens: exact, fast, none
    flock -x /tmp/cpu.lock python bench/generate.py --group prefill    # time to first token, long prompt
    flock -x /tmp/cpu.lock python bench/generate.py --group rotary     # the same shape with rotary positions
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
from pathlib import Path

CASES = {  # name -> (new tokens, use the cache, past-context mode, prompt length, positions)
    "no cache, 250": (250, False, "exact", 1, "learned"),
    "cache, 250": (250, True, "exact", 1, "learned"),
    "no cache, 500": (500, False, "exact", 1, "learned"),
    "cache exact, 500": (500, True, "exact", 1, "learned"),
    "cache fast, 500": (500, True, "fast", 1, "learned"),
    "no cache, 255-token prompt": (1, False, "exact", 255, "learned"),
    "cache, 255-token prompt": (1, True, "exact", 255, "learned"),
    "rotary: no cache, 500": (500, False, "exact", 1, "rope"),
    "rotary: cache exact, 500": (500, True, "exact", 1, "rope"),
    "rotary: cache rolling, 500": (500, True, "rolling", 1, "rope"),
}
GROUPS = {
    "inside": ["no cache, 250", "cache, 250"],
    "past": ["no cache, 500", "cache exact, 500", "cache fast, 500"],
    "prefill": ["no cache, 255-token prompt", "cache, 255-token prompt"],
    "rotary": ["rotary: no cache, 500", "rotary: cache exact, 500", "rotary: cache rolling, 500"],
}
NUM_SAMPLES = 10


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(case: str, export: str, started: float) -> None:
    """One case in this process; prints one JSON line."""
    import torch

    from gpt.generate import load, sample_ids

    new_tokens, use_cache, mode, prompt_len, _ = CASES[case]
    model, tokenizer, _ = load(export, device="cpu", dtype="float32")
    text = (Path(__file__).resolve().parent.parent / "gpt/assets/tinyshakespeare.txt").read_text()
    prompt = tokenizer.encode(text[:prompt_len])
    rss_before = rss_mib()
    t0 = time.perf_counter()
    first = None
    steps = 0
    for _ in sample_ids(
        model, prompt, new_tokens, NUM_SAMPLES, temperature=0.8, seed=1337, context_mode=mode, use_cache=use_cache
    ):
        if first is None:
            first = time.perf_counter()
            first_wall = time.time()
        steps += 1
    seconds = time.perf_counter() - t0
    assert steps == new_tokens  # no end-of-text in a char vocabulary: every step ran
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    record = {
        "case": case,
        "tokens_per_s": NUM_SAMPLES * new_tokens / seconds,
        "seconds": seconds,
        "ttft_ms": 1000 * (first - t0),
        "ttft_from_start_s": first_wall - started,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(record), flush=True)


def make_export(folder: Path, position: str) -> Path:
    import torch

    from gpt.checkpoint import save_weights, write_export
    from gpt.config import load_config
    from gpt.model import build_model
    from gpt.tokenizer import ASSETS, CharTokenizer

    tokenizer = CharTokenizer.from_text((ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    cfg = load_config(["shakespeare_char"]).model
    cfg.vocab_size, cfg.position = tokenizer.vocab_size, position
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(cfg)
    save_weights(model.state_dict(), folder / "weights.safetensors")
    write_export(folder / "model", folder / "weights.safetensors", cfg, tokenizer, {"step": 0})
    return folder / "model"


def run_case(case: str, exports: dict[str, Path]) -> dict:
    export = exports[CASES[case][4]]
    started = time.time()
    cmd = [sys.executable, __file__, "--worker", case, "--export", str(export), "--started", repr(started)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", choices=list(GROUPS), default="inside")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.export, args.started)
        return

    cases = GROUPS[args.group]
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    with tempfile.TemporaryDirectory() as tmp:
        positions = {CASES[c][4] for c in cases}
        exports = {p: make_export(Path(tmp) / p, p) for p in positions}
        for _ in range(args.repeats):
            for case in cases:  # interleaved, so slow drift of the machine hits every case alike
                runs[case].append(run_case(case, exports))

    print(f"{args.group}: {NUM_SAMPLES} samples as one batch, median of {args.repeats} runs each, "
          f"{runs[cases[0]][0]['threads']} torch threads")  # fmt: skip
    print("| case | new tokens/s | generation s | first token ms | first token from start s | RSS MiB | peak RSS MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = {c: {k: statistics.median(r[k] for r in runs[c]) for k in runs[c][0] if k != "case"} for c in cases}
    for c in cases:
        m = med[c]
        print(
            f"| {c} | {m['tokens_per_s']:,.0f} | {m['seconds']:.2f} | {m['ttft_ms']:.1f} | "
            f"{m['ttft_from_start_s']:.2f} | {m['rss_before_mib']:.0f} | {m['peak_rss_mib']:.0f} |"
        )
    baseline = next(c for c in cases if "no cache" in c)
    for c in cases:
        if c != baseline:
            speed = med[c]["tokens_per_s"] / med[baseline]["tokens_per_s"]
            first = med[c]["ttft_ms"] / med[baseline]["ttft_ms"]
            if CASES[c][0] > 1:
                print(f"{c} vs {baseline}: {speed:.1f}x the new tokens/s; first token in {first:.2f}x the time")
            else:  # one new token: only the time to the first token means anything
                print(f"{c} vs {baseline}: first token in {first:.2f}x the time")
    print(
        "all runs, new tokens/s: "
        + "; ".join(f"{c}: " + ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs[c]) for c in cases)
    )


if __name__ == "__main__":
    main()
