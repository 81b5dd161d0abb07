"""Generate text from a trained model.

    python sample.py                                   # newest checkpoint of out/default
    python sample.py --out_dir out/shakespeare_char --start "ROMEO:" --num_samples 5 --top_p 0.9
    python sample.py --start FILE:prompt.txt --temperature 0 --max_new_tokens 200
    python sample.py --max_new_tokens 2000 --context_mode fast   # long samples, faster past the context
    python sample.py --help                            # every option

The first sample streams to the terminal as it is generated; the others follow, each under a
'--- sample i of n ---' line. When stdout is not a terminal every sample is printed whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpt.config import SampleConfig, parse_flags
from gpt.errors import UserError, run_main


def read_prompt(start: str) -> str:
    if not start.startswith("FILE:"):
        return start
    path = Path(start[5:])
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"prompt file {path} is a directory; give a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 (byte offset {e.start})") from None


def main(argv: list[str]) -> int:
    cfg = parse_flags(SampleConfig, argv, "sample.py", __doc__)
    # after the flags: --help and a bad flag answer before torch loads
    from gpt.generate import (
        check_memory,
        check_options,
        complete_prefix,
        default_prompt,
        encode_prompt,
        load,
        resolve_context_mode,
        sample_ids,
    )

    check_options(cfg.max_new_tokens, cfg.num_samples, cfg.temperature, cfg.top_k, cfg.top_p, cfg.context_mode)
    model, tokenizer, _ = load(cfg.out_dir, cfg.device, cfg.dtype)
    context_mode = resolve_context_mode(model, cfg.context_mode)  # 'auto': rolling for rotary models
    prompt = read_prompt(cfg.start) or default_prompt(tokenizer)
    ids = encode_prompt(tokenizer, prompt)
    check_memory(model, len(ids), cfg.max_new_tokens, cfg.num_samples)  # before anything is allocated
    stream = sys.stdout.isatty()  # token by token on a terminal, whole samples otherwise
    if stream:
        print(f"--- sample 1 of {cfg.num_samples} ---\n{prompt}", end="", flush=True)
    shown = ""
    samples: list[list[int]] = [[] for _ in range(cfg.num_samples)]
    for samples in sample_ids(
        model, ids, cfg.max_new_tokens, cfg.num_samples, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed,
        tokenizer.eot_id, context_mode,
    ):  # fmt: skip
        if stream:
            text = complete_prefix(tokenizer.decode(samples[0]))
            print(text[len(shown) :], end="", flush=True)
            shown = text
    for i, sample in enumerate(samples):
        text = tokenizer.decode(sample)
        if i == 0 and stream:
            print(text[len(shown) :])
            continue
        print(f"--- sample {i + 1} of {cfg.num_samples} ---\n{prompt}{text}")
    return 0


if __name__ == "__main__":
    run_main(main)
