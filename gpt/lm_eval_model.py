"""lm-evaluation-harness on our checkpoints, without converting them to transformers.

    pip install -e ".[eval]"
    python -m gpt.evaluate --out_dir out/gpt2 --lm_eval hellaswag,lambada_openai --limit 500
    python -m gpt.evaluate --out_dir out/gpt2 --lm_eval my_task --include_path my_tasks/

or from Python, with lm_eval's own evaluator::

    import lm_eval
    from gpt.lm_eval_model import GPTLM
    results = lm_eval.simple_evaluate(model=GPTLM("out/gpt2"), tasks=["hellaswag"])

``GPTLM`` (registered with lm_eval's model registry as ``gpt`` once this module is imported)
answers lm_eval's three kinds of request:

- ``loglikelihood``: the (context, continuation) pairs, tokenized by lm_eval's own rules
  (``TemplateLM``: trailing spaces of the context move to the continuation, and the continuation is
  what encoding the whole adds to the context), scored in batches by ``gpt.scoring``;
- ``loglikelihood_rolling``: a whole text in disjoint windows of block_size tokens, each after the
  end-of-text token or the end of the window before (lm_eval's rolling windows, as its ``hf`` model);
- ``generate_until``: greedy (or sampled, when the task asks) decoding with the key/value cache of
  ``gpt.generate``; requests whose prompts have the same token length are decoded together as one
  batch, and each stops at the first of its ``until`` strings or after ``max_gen_toks`` tokens.

A character-level model has no end-of-text token unless its corpus had documents; its empty-context
prefix is then its first token. Characters its vocabulary lacks are left out of the text (lm_eval
tasks use characters Shakespeare does not).
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gpt.generate import generate_tokens, load
from gpt.scoring import score_pairs
from gpt.tokenizer import CharTokenizer


@register_model("gpt")
class GPTLM(TemplateLM):
    """lm_eval's model interface over a run directory, checkpoint or model folder of this package."""

    def __init__(self, out_dir: str, device: str = "auto", dtype: str = "auto", batch_size: int | str = 8, **_: Any):
        super().__init__()
        self.model, self.gpt_tokenizer, self.meta = load(out_dir, device, dtype)
        self.torch_device = next(self.model.parameters()).device
        self.block_size = self.model.cfg.block_size
        self.vocab_size = self.model.cfg.vocab_size
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # 'auto' -> the default

    # -- tokens ------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        eot = self.gpt_tokenizer.eot_id
        return eot if eot is not None else 0

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        tokenizer = self.gpt_tokenizer
        if isinstance(tokenizer, CharTokenizer):
            string = "".join(ch for ch in string if ch in tokenizer.stoi)
        return tokenizer.encode(string)

    def tok_decode(self, ids: list[int]) -> str:
        return self.gpt_tokenizer.decode(ids)

    # -- scoring -----------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        scores = score_pairs(self.model, pairs, self.block_size, self.vocab_size, self.batch_size, self.torch_device)
        results = [(s.logprob, s.greedy) for s in scores]
        for (request, _, _), result in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (text,) in enumerate(request.args for request in requests):
            pieces = get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.block_size,
                context_len=1,
            )  # fmt: skip
            for window in map(make_disjoint_window, pieces):
                windows.append(window)
                owners.append(index)
        totals = [0.0] * len(requests)
        scores = score_pairs(self.model, windows, self.block_size, self.vocab_size, self.batch_size, self.torch_device)
        for owner, score in zip(owners, scores, strict=True):
            totals[owner] += score.logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    # -- generation --------------------------------------------------------------------------------

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        prompts = []
        for context, gen_kwargs in (request.args for request in requests):
            ids = self.tok_encode(context) or [self.prefix_token_id]
            prompts.append((ids[-self.block_size :], dict(gen_kwargs)))
        results: list[str] = [""] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (len(prompts[i][0]), repr(sorted(prompts[i][1].items()))))
        same_shape = groupby(order, key=lambda i: (len(prompts[i][0]), repr(sorted(prompts[i][1].items()))))
        for _, group in same_shape:
            indices = list(group)
            for lo in range(0, len(indices), self.batch_size):
                batch = indices[lo : lo + self.batch_size]
                texts = self._generate([prompts[i][0] for i in batch], prompts[batch[0]][1])
                for i, text in zip(batch, texts, strict=True):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    def _generate(self, prompts: list[list[int]], gen_kwargs: dict[str, Any]) -> list[str]:
        """Continuations of prompts of one length, decoded as one batch, each cut at its first stop string."""
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = int(gen_kwargs.get("max_gen_toks", 256))
        sample = bool(gen_kwargs.get("do_sample", False))
        temperature = float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0
        generator = torch.Generator(device=self.torch_device).manual_seed(1234)
        batch = torch.tensor(prompts, dtype=torch.long, device=self.torch_device)
        new_ids: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        steps = generate_tokens(self.model, batch, max_tokens, temperature=temperature, generator=generator)
        for token in steps:
            for row, t in enumerate(token.tolist()):
                if done[row]:
                    continue
                if t == self.gpt_tokenizer.eot_id:
                    done[row] = True
                    continue
                new_ids[row].append(t)
                done[row] = any(stop in self.tok_decode(new_ids[row]) for stop in until)
            if all(done):
                break
        return [cut_at_stop(self.tok_decode(ids), until) for ids in new_ids]


def cut_at_stop(text: str, until: list[str]) -> str:
    """text up to (not including) the earliest of the stop strings."""
    cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
    return text[:cut]


def run_lm_eval(cfg, run_directory) -> int:
    """The --lm_eval command: lm_eval's evaluator on the model, its table printed, its results saved."""
    import json
    from pathlib import Path

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from gpt.errors import UserError
    from gpt.export import resolve_export

    names = [name.strip() for name in cfg.lm_eval.split(",") if name.strip()]
    if cfg.include_path and not Path(cfg.include_path).is_dir():
        raise UserError(f"--include_path {cfg.include_path} is not a folder of task YAML files")
    manager = TaskManager(include_path=cfg.include_path or None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"lm_eval knows no task {', '.join(map(repr, unknown))}; list them with `lm_eval ls tasks`, or add "
            "--include_path for a folder of your own task YAML files"
        )
    export = resolve_export(cfg.out_dir)
    dtype = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}[cfg.mixed_precision]
    model = GPTLM(str(export), dtype=dtype, batch_size=cfg.batch_size)
    results = simple_evaluate(model=model, tasks=names, limit=cfg.limit or None, task_manager=manager)
    print(make_table(results), flush=True)
    if "groups" in results:
        print(make_table(results, "groups"), flush=True)
    path = Path(cfg.json) if cfg.json else run_directory(export) / "lm_eval.json"
    record = {"model": str(export), "step": model.meta.get("step"), "results": results["results"]}
    record |= {"configs": results.get("configs", {}), "n-samples": results.get("n-samples", {})}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return 0
