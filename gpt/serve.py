"""Serve a trained model behind an OpenAI-compatible completions API (needs the ``serve`` extra).

    python -m gpt.serve                                  # out/default on http://127.0.0.1:8000
    python -m gpt.serve --out_dir out/shakespeare_char --port 8080 --max_batch 32
    python -m gpt.serve --help                           # every option

Endpoints: POST /v1/completions (OpenAI's completions API, streamed as server-sent events with
"stream": true; "top_k" is an extension), GET /v1/models, GET /health. Tokens are drawn by the
code sample.py uses (gpt.generate), so a request gets the text ``sample.py`` prints for the same
prompt, options and seed, whatever else the server is doing. How requests are batched: gpt.batching.

There is no authentication: the server listens on loopback unless --host says otherwise.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from gpt.config import ServeConfig, parse_flags
from gpt.errors import run_main


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str]) -> int:
    cfg = parse_flags(ServeConfig, argv, "python -m gpt.serve", __doc__)
    import torch  # after the flags: --help and a bad flag answer before torch loads
    import uvicorn

    from gpt.generate import load
    from gpt.server import Server

    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)

    model, tokenizer, _ = load(cfg.out_dir, cfg.device, cfg.dtype)
    name = cfg.model_name or Path(cfg.out_dir).resolve().name
    server = Server(cfg, model, tokenizer, name)
    if not is_loopback(cfg.host):
        print(f"warning: listening on {cfg.host}: other machines can use this model, without authentication")
    print(f"serving {name!r} on http://{cfg.host}:{cfg.port}/v1 (POST /v1/completions, GET /v1/models, GET /health)")
    uvicorn.run(server.app(), host=cfg.host, port=cfg.port, log_level="warning")
    return 0


if __name__ == "__main__":
    run_main(main)
