"""Throughput and latency of the completions server (python -m gpt.serve) under concurrent clients.

    flock -x /tmp/cpu.lock python bench/serve.py                       # 1, 4 and 16 clients
    flock -x /tmp/cpu.lock python bench/serve.py --clients 64 --requests 512 --duration_s 300   # load test
    python bench/serve.py --help

The model has the default config's shape (4 layers, 4 heads, 128 wide, context 64) and Tiny
Shakespeare's 65-character vocabulary, with randomly initialised weights (speed depends on the
shape, not on the values), written as a portable export. The server runs in its own process as
a user starts it, with one CPU thread for the model unless --cpu_threads says otherwise. For each
number of clients, that many threads each send requests one after the other (POST
/v1/completions: prompt "ROMEO:", --max_tokens tokens, temperature 0.8, a seed per request) until
--requests have been sent or --duration_s has passed, whichever comes first.
Every request has the same prompt length, so requests in flight together share forward passes.

Columns: requests answered, errors (anything but HTTP 200 with max_tokens tokens), generated
tokens/s over the wall time, median and 99th-percentile latency of a request, the mean number of
sequences decoded per forward pass (from the server's /health counters), then whether GET /health
answered "ok" afterwards.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "ROMEO:"


def make_export(folder: Path) -> Path:
    import torch

    from gpt.checkpoint import save_weights, write_export
    from gpt.config import ModelConfig
    from gpt.model import GPT
    from gpt.tokenizer import ASSETS, CharTokenizer

    tokenizer = CharTokenizer.from_text((ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size)  # the default model's shape
    save_weights(GPT(cfg).state_dict(), folder / "weights.safetensors")
    write_export(folder / "model", folder / "weights.safetensors", cfg, tokenizer, {"step": 0})
    return folder / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int, options: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpt.serve", "--out_dir", str(export), "--port", str(port), *options]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; its log:\n{log.read_text()}")


def load(url: str, clients: int, requests: int, duration_s: float, max_tokens: int) -> dict:
    """``clients`` threads send requests back to back until ``requests`` are sent or the time is up."""
    latencies: list[float] = []
    errors: list[str] = []
    tokens = [0]
    sent = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def client() -> None:
        with httpx.Client(base_url=url, timeout=duration_s + 60) as http:
            while True:
                with lock:
                    if sent[0] == requests or time.monotonic() > deadline:
                        return
                    sent[0] += 1
                    seed = sent[0]
                body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed}
                start = time.perf_counter()
                try:
                    r = http.post("/v1/completions", json=body)
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == max_tokens
                    problem = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                with lock:
                    if problem:
                        errors.append(problem)
                    else:
                        latencies.append(time.perf_counter() - start)
                        tokens[0] += max_tokens

    before = httpx.get(f"{url}/health").json()
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()
    passes = after["forward_passes"] - before["forward_passes"]
    mean_batch = (after["rows_decoded"] - before["rows_decoded"]) / max(passes, 1)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))] if latencies else float("nan")
    return {
        "clients": clients, "answered": len(latencies), "errors": len(errors), "first_error": errors[:1],
        "tokens_per_s": tokens[0] / wall, "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p99_s": p99, "wall_s": wall, "mean_batch": mean_batch,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,4,16", help="numbers of concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=128, help="requests per number of clients")
    parser.add_argument("--duration_s", type=float, default=120, help="stop sending after this long, per row")
    parser.add_argument("--max_tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--max_batch", type=int, default=16, help="the server's --max_batch")
    parser.add_argument("--max_batches", type=int, default=2, help="the server's --max_batches")
    parser.add_argument("--cpu_threads", type=int, default=1, help="the server's --cpu_threads")
    parser.add_argument("--port", type=int, default=0, help="the server's port; 0: a free one")
    args = parser.parse_args()
    port = args.port or free_port()
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        options = ["--max_batch", str(args.max_batch), "--max_batches", str(args.max_batches)]
        options += ["--cpu_threads", str(args.cpu_threads)]
        server = start_server(export, port, options, Path(tmp) / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            print(
                f"{args.requests} requests of {args.max_tokens} tokens per row, at most {args.duration_s:.0f} s; "
                f"server: {' '.join(options)}"
            )
            print(
                "| clients | answered | errors | tokens/s | p50 latency | p99 latency | rows per forward pass | wall |"
            )
            print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
            for clients in map(int, args.clients.split(",")):
                r = load(url, clients, args.requests, args.duration_s, args.max_tokens)
                print(
                    f"| {clients} | {r['answered']} | {r['errors']} | {r['tokens_per_s']:,.0f} | "
                    f"{r['p50_s']:.2f} s | {r['p99_s']:.2f} s | {r['mean_batch']:.1f} | {r['wall_s']:.1f} s |",
                    flush=True,
                )
                if r["first_error"]:
                    print(f"first error: {r['first_error'][0]}")
            health = httpx.get(f"{url}/health")
            print(f"GET /health afterwards: HTTP {health.status_code} {health.text}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
