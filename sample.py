"""Generate text from a trained model.

    python sample.py                                   # newest checkpoint of out/default
    python sample.py --out_dir out/shakespeare_char --start "ROMEO:" --num_samples 5
    python sample.py --start FILE:prompt.txt --temperature 0 --max_new_tokens 200
    python sample.py --help                            # every option

The first sample streams to the terminal as it is generated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gpt.config import SampleConfig, parse_flags
from gpt.errors import UserError
from gpt.generate import encode_prompt, generate_tokens, load


def pick_device(name: str) -> str:
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, name)


def read_prompt(start: str) -> str:
    if not start.startswith("FILE:"):
        return start
    path = Path(start[5:])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 (byte offset {e.start})") from None


def main(argv: list[str]) -> int:
    cfg = parse_flags(SampleConfig, argv, "sample.py", __doc__)
    device = pick_device(cfg.device)
    model, tokenizer, meta = load(cfg.out_dir, device, pick_dtype(cfg.dtype, device))
    prompt = read_prompt(cfg.start)
    ids = encode_prompt(tokenizer, prompt)
    batch = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stream = sys.stdout.isatty()  # token by token on a terminal, whole samples otherwise
    samples, done = [list() for _ in range(cfg.num_samples)], [False] * cfg.num_samples
    if stream:
        print(f"--- sample 1 of {cfg.num_samples} ---\n{prompt}", end="", flush=True)
    shown = ""
    for token in generate_tokens(model, batch, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, generator):
        for i, t in enumerate(token.tolist()):
            done[i] = done[i] or t == tokenizer.eot_id
            if not done[i]:
                samples[i].append(t)
        if stream and not done[0]:
            text = tokenizer.decode(samples[0])
            print(text[len(shown) :], end="", flush=True)
            shown = text
        if all(done):
            break
    for i, sample in enumerate(samples):
        if i == 0 and stream:
            print()
            continue
        print(f"--- sample {i + 1} of {cfg.num_samples} ---\n{prompt}{tokenizer.decode(sample)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
