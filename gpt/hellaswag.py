"""HellaSwag: pick the right ending of a short story, the benchmark GPT-2 reproductions report.

    python -m gpt.evaluate --out_dir out/default --task hellaswag                    # hub: Rowan/hellaswag
    python -m gpt.evaluate --out_dir out/default --task hellaswag --data hellaswag_val.jsonl --limit 1000
    python train.py gpt2_124m_fineweb train.eval_tasks=[hellaswag]                 # at every evaluation

Each item has a context and four endings, one of them right. The model scores every ending by the
log-likelihood of its tokens after the context (``gpt.scoring``), and

- ``acc`` counts an item right when the ending with the highest summed log-likelihood is the right one;
- ``acc_norm`` divides each ending's log-likelihood by its length in characters first, as
  lm-evaluation-harness's ``acc_norm`` does (so long endings are not penalised for their length).

The text is rendered exactly as lm-evaluation-harness's ``hellaswag`` task renders it: the context
is ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()`` and each ending follows it after one
space, with WikiHow's bracketed artefacts cleaned the same way. llm.c's published GPT-2 124M figure
(about 29.5% acc_norm on the 10,042 validation items) uses the raw ``ctx`` and normalises by token
count, so it is close to, not the same as, ours; chance is 25%.

Data: the validation split of the hub dataset ``Rowan/hellaswag`` (10,042 items) through
``datasets``, or a local jsonl in the release format (``ctx``, or ``ctx_a`` + ``ctx_b``; ``endings``;
``label``; ``activity_label`` optional). A character-level model scores the text with the characters
its vocabulary lacks left out, and the result says how many items had any.

Several processes share the items like the full evaluation does (round-robin, the same number of
forward passes everywhere), so the figures do not depend on the number of processes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gpt.errors import UserError
from gpt.scoring import score_pairs
from gpt.tokenizer import CharTokenizer, Tokenizer

HUB_DATASET = "Rowan/hellaswag"
ENDINGS = 4


@dataclass
class Item:
    context: str  # rendered: activity label, ctx_a and ctx_b
    endings: list[str]  # rendered, without the space that joins them to the context
    label: int  # index of the right ending


@dataclass
class HellaSwagResult:
    acc: float
    acc_norm: float
    items: int
    items_with_unknown_chars: int  # character models: items with characters the vocabulary lacks
    processes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean(text: str) -> str:
    """lm-evaluation-harness's HellaSwag preprocessing (WikiHow's bracketed artefacts removed)."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_item(row: dict[str, Any], where: str) -> Item:
    """One item from a row of the release format; one clear error naming the row otherwise."""
    try:
        context = row["ctx_a"] + " " + str(row.get("ctx_b", "")).capitalize() if "ctx_a" in row else row["ctx"]
        endings, label = row["endings"], int(row["label"])
    except KeyError as e:
        raise UserError(
            f"{where} has no field {e.args[0]!r} (HellaSwag rows need ctx or ctx_a/ctx_b, endings, label)"
        ) from None
    except (TypeError, ValueError):
        raise UserError(f"{where}: 'label' must be an integer, got {row.get('label')!r}") from None
    if not isinstance(context, str) or not isinstance(endings, list) or len(endings) != ENDINGS:
        raise UserError(f"{where}: expected a text context and a list of {ENDINGS} endings")
    if not all(isinstance(e, str) and e.strip() for e in endings):
        raise UserError(f"{where}: every ending must be non-empty text")
    if not 0 <= label < ENDINGS:
        raise UserError(f"{where}: label {label} is not the index of one of the {ENDINGS} endings")
    activity = row.get("activity_label")
    context = f"{activity}: {context}" if activity else context
    return Item(clean(context), [clean(e) for e in endings], label)


def read_jsonl(path: Path, limit: int = 0) -> list[Item]:
    """Items of a local jsonl file in the release format (the first ``limit``; 0: all)."""
    if not path.is_file():
        raise UserError(f"HellaSwag data {path} does not exist; give a jsonl in the release format")
    items = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number} is not valid JSON ({e.msg})") from None
            except UnicodeDecodeError:
                raise UserError(f"{path} is not UTF-8 text") from None
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number} is not a JSON object")
            items.append(parse_item(row, f"{path} line {number}"))
            if limit and len(items) == limit:
                break
    if not items:
        raise UserError(f"{path} holds no HellaSwag items")
    return items


def read_hub(limit: int = 0) -> list[Item]:
    """The validation split of Rowan/hellaswag through `datasets` (downloaded once, then cached)."""
    from datasets import load_dataset

    try:
        rows = load_dataset(HUB_DATASET, split="validation")
    except Exception as e:  # offline, hub errors, a missing cache: all end the same way for the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"could not load {HUB_DATASET} from the Hugging Face hub ({first}); without network, pass a local "
            "jsonl of the validation items (--data FILE, or hellaswag=FILE in train.eval_tasks)"
        ) from None
    if limit:
        rows = rows.select(range(min(limit, len(rows))))
    return [parse_item(dict(row), f"{HUB_DATASET} row {i}") for i, row in enumerate(rows)]


def load_items(path: str = "", limit: int = 0) -> list[Item]:
    """From a local jsonl when ``path`` is given, else from the hub."""
    if limit < 0:
        raise UserError(f"the item limit must be >= 0 (0: every item), got {limit}")
    return read_jsonl(Path(path), limit) if path else read_hub(limit)


def encode(tokenizer: Tokenizer, text: str) -> tuple[list[int], bool]:
    """Token ids of text; for a character model the characters it does not know are left out.
    Returns the ids and whether any character was left out."""
    if isinstance(tokenizer, CharTokenizer):
        known = [ch for ch in text if ch in tokenizer.stoi]
        return tokenizer.encode("".join(known)), len(known) < len(text)
    return tokenizer.encode(text), False


def item_pairs(item: Item, tokenizer: Tokenizer) -> tuple[list[tuple[list[int], list[int]]], bool]:
    """The four (context ids, ending ids) pairs of an item, and whether characters were left out."""
    context, lost = encode(tokenizer, item.context)
    if not context:  # nothing to condition on: start as a document starts
        context = [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode(" ")[:1]
    pairs = []
    for ending in item.endings:
        ids, ending_lost = encode(tokenizer, " " + ending)
        lost = lost or ending_lost
        pairs.append((context, ids or encode(tokenizer, " ")[0]))
    return pairs, lost


def evaluate_hellaswag(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    items: list[Item],
    block_size: int,
    vocab_size: int,
    batch_size: int = 8,
    accelerator=None,
) -> HellaSwagResult:
    """acc and acc_norm over ``items``; ``batch_size`` items (4 endings each) per forward pass.

    With an accelerator the items are shared out over its processes and the counts reduced; call it
    on every process. Without one: a single process on the model's device.
    """
    world = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    device = accelerator.device if accelerator else next(model.parameters()).device
    mine = items[rank::world]
    per_process = math.ceil(len(items) / world)
    padding = per_process - len(mine)  # the same number of forward passes on every process
    mine = mine + items[:1] * padding
    pairs, lost = [], []
    for item in mine:
        item_p, item_lost = item_pairs(item, tokenizer)
        pairs += item_p
        lost.append(item_lost)
    scores = score_pairs(model, pairs, block_size, vocab_size, batch_size * ENDINGS, device)
    right = right_norm = 0
    for i, item in enumerate(mine[: len(mine) - padding]):
        logprobs = [s.logprob for s in scores[i * ENDINGS : (i + 1) * ENDINGS]]
        normed = [lp / len(ending) for lp, ending in zip(logprobs, item.endings, strict=True)]
        right += argmax(logprobs) == item.label
        right_norm += argmax(normed) == item.label
    n_lost = sum(lost[: len(mine) - padding])
    counts = torch.tensor([right, right_norm, len(mine) - padding, n_lost], dtype=torch.float64, device=device)
    if accelerator is not None:
        counts = accelerator.reduce(counts, reduction="sum")
    right, right_norm, n, n_lost = counts.tolist()
    return HellaSwagResult(right / n, right_norm / n, int(n), int(n_lost), world)


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal values, as numpy's argmax


# ----------------------------------------------------------------------------------------------
# In the training loop: train.eval_tasks


def parse_eval_tasks(specs: list[str]) -> dict[str, str]:
    """``train.eval_tasks`` entries, ``hellaswag`` (the hub) or ``hellaswag=FILE`` (a local jsonl) ->
    {task: data path, empty for the hub}."""
    tasks = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if name.strip() != "hellaswag":
            raise UserError(f"unknown evaluation task {name.strip()!r} in train.eval_tasks; known: hellaswag")
        tasks[name.strip()] = path.strip()
    return tasks


class InLoopTasks:
    """The tasks of ``train.eval_tasks``, their items read once at start-up, scored at each evaluation."""

    def __init__(self, specs: list[str], limit: int, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.items = {name: load_items(path, limit) for name, path in parse_eval_tasks(specs).items()}

    def evaluate(self, model: torch.nn.Module, block_size: int, vocab_size: int, batch_size: int, accelerator):
        """{'eval/hellaswag/acc': ..., 'eval/hellaswag/acc_norm': ...}; call on every process."""
        out = {}
        for name, items in self.items.items():
            result = evaluate_hellaswag(model, self.tokenizer, items, block_size, vocab_size, batch_size, accelerator)
            out |= {f"eval/{name}/acc": result.acc, f"eval/{name}/acc_norm": result.acc_norm}
        return out


# ----------------------------------------------------------------------------------------------
# python -m gpt.evaluate --task hellaswag


def format_result(result: HellaSwagResult, title: str) -> str:
    rows = [
        ("acc", f"{result.acc:.4f}"),
        ("acc_norm", f"{result.acc_norm:.4f}  (log-likelihood / ending length in characters)"),
        ("items", f"{result.items:,}"),
        ("processes", str(result.processes)),
    ]
    if result.items_with_unknown_chars:
        rows.append(("unknown chars", f"{result.items_with_unknown_chars:,} items had characters left out"))
    width = max(len(name) for name, _ in rows)
    return "\n".join([title] + [f"  {name:<{width}}  {value}" for name, value in rows])


def run_task(cfg, model, model_cfg, tokenizer: Tokenizer, accelerator, export: Path, meta: dict, run_dir: Path):
    """The --task command: score, print a table, write JSON, and print the JSON as the last line."""
    if cfg.task != "hellaswag":
        raise UserError(f"unknown --task {cfg.task!r}; known: hellaswag (or --lm_eval for lm-evaluation-harness)")
    items = load_items(cfg.data, cfg.limit)
    if accelerator.is_main_process:
        print(f"scoring {len(items):,} HellaSwag items x {ENDINGS} endings with {export}", flush=True)
    result = evaluate_hellaswag(
        model, tokenizer, items, model_cfg.block_size, model_cfg.vocab_size, cfg.batch_size, accelerator
    )
    if accelerator.is_main_process:
        record = {"model": str(export), "step": meta.get("step"), "task": "hellaswag", "data": cfg.data or HUB_DATASET}
        record |= result.as_dict()
        path = Path(cfg.json) if cfg.json else run_dir / "hellaswag.json"
        print(format_result(result, f"HellaSwag, {export} (step {meta.get('step')}):"), flush=True)
        try:
            path.write_text(json.dumps(record, indent=2) + "\n")
            print(f"wrote {path}", flush=True)
        except OSError as e:
            print(f"could not write {path} ({e.strerror}); the result is the JSON line below", flush=True)
        print(json.dumps(record), flush=True)
