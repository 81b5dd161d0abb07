"""The full evaluation pass over a split: loss, perplexity and bits per byte (``python -m gpt.evaluate``
runs it; every training run ends with it).

Which tokens. A split of N tokens is cut into non-overlapping windows of T = block_size inputs:
window w reads tokens [wT, wT + T) and predicts tokens [wT + 1, wT + T + 1). Every token but the
first is predicted exactly once, from the tokens before it in its window (so the first prediction of
a window has one token of context and the last has T; a sliding window would give lower, slower
figures). When N - 1 is not a multiple of T the last window is shorter: it is padded, and the
padding is ignored, so no token is dropped or counted twice.

Several processes. Windows are dealt out round-robin; every process runs the same number of forward
passes (a process short of windows runs ignored padding windows, as sharded models need every
process in every pass), and the sums are reduced, so the figures do not depend on the number of
processes beyond float rounding.

Bits per byte = (sum over predicted tokens of -log2 p(token)) / (UTF-8 bytes of the text those
tokens decode to). The denominator counts bytes, not tokens, so models with different tokenizers
(a character model and a GPT-2 BPE model of the same text) compare. Each token's byte length is
exact: the UTF-8 length of its character (char tokenizer) or of the bytes it stands for (GPT-2);
end-of-text (GPT-2's, or a char tokenizer's for data of several documents) stands for no text and
counts 0 bytes, its prediction still counts in the loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from gpt import checkpoint as ckpt
from gpt.data import TokenStream, eval_window_starts, to_inputs_targets
from gpt.errors import UserError
from gpt.mixture import Mixture
from gpt.prepared import ensure_dataset
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer, Tokenizer


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy, nats per predicted token
    perplexity: float  # exp(loss)
    bits_per_byte: float
    tokens: int  # tokens predicted (N - 1 for a split of N tokens)
    bytes: int  # UTF-8 bytes of the text the predicted tokens decode to
    windows: int
    block_size: int
    processes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_byte_lengths(tokenizer: Tokenizer) -> torch.Tensor:
    """(V,) int64: how many UTF-8 bytes of text each token id stands for."""
    if isinstance(tokenizer, CharTokenizer):  # end-of-text, where there is one, is the id after the characters
        lengths = [len(ch.encode("utf-8")) for ch in tokenizer.chars] + [0] * (tokenizer.eot_id is not None)
    elif isinstance(tokenizer, GPT2Tokenizer):
        token_bytes = tokenizer.enc.decode_single_token_bytes
        lengths = [0 if i == tokenizer.eot_id else len(token_bytes(i)) for i in range(tokenizer.vocab_size)]
    else:  # a tokenizer whose tokens each decode to whole characters
        texts = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        if any("\ufffd" in t for t in texts):
            raise UserError(
                f"tokenizer {tokenizer.identity!r} has tokens that are parts of characters; bits per byte needs "
                "the byte length of every token, which this tokenizer does not give"
            )
        lengths = [len(t.encode("utf-8")) for t in texts]
    return torch.tensor(lengths, dtype=torch.long)


def num_windows(num_tokens: int, block_size: int) -> int:
    """Windows of block_size predictions that cover the N - 1 predicted tokens of a split."""
    return math.ceil((num_tokens - 1) / block_size)


def window_batch(data: TokenStream, windows: list[int], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T) of the given windows; window -1 is padding. Ignored targets are -1."""
    x = np.zeros((len(windows), block_size), dtype=np.int64)
    y = np.full((len(windows), block_size), -1, dtype=np.int64)
    for row, w in enumerate(windows):
        if w < 0:
            continue
        start = w * block_size
        tokens = data.window(start, min(block_size + 1, len(data) - start))  # shorter for the last window
        x[row, : len(tokens) - 1] = tokens[:-1]
        y[row, : len(tokens) - 1] = tokens[1:]
    return torch.from_numpy(x), torch.from_numpy(y)


@torch.no_grad()
def loss_totals(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    accelerator: Accelerator | None = None,
    byte_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss core of every evaluation: run ``model`` over ``batches`` of inputs and targets (-1:
    ignored) in eval mode, without gradients, under the accelerator's autocast; returns float64
    (sum of -ln p, predicted tokens, their UTF-8 bytes) summed over every process (bytes 0 without
    ``byte_lengths``). Every process must pass the same number of batches: each one is a forward pass
    that sharded models run together. Without an accelerator: one process, the model's device."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    byte_lengths = byte_lengths.to(device) if byte_lengths is not None else None
    was_training = model.training
    model.eval()
    with accelerator.autocast() if accelerator else contextlib.nullcontext():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            _, nll = model(x, y, reduction="none")  # (B, T) float32, 0 where ignored
            real = y.flatten() != -1
            totals[0] += nll.double().sum()
            totals[1] += real.sum()
            if byte_lengths is not None:
                totals[2] += byte_lengths[y.flatten()[real]].sum()
    model.train(was_training)
    return accelerator.reduce(totals, reduction="sum") if accelerator else totals


def evaluate_split(
    model: torch.nn.Module,
    data: TokenStream,
    byte_lengths: torch.Tensor,
    block_size: int,
    batch_size: int,
    accelerator: Accelerator | None = None,
) -> EvalResult:
    """The full pass described in the module doc. Without an accelerator: one process, the model's device."""
    world = accelerator.num_processes if accelerator else 1
    rank = accelerator.process_index if accelerator else 0
    if len(data) < 2:
        raise UserError(f"{data.files[0].path} holds {len(data)} token(s); evaluation needs at least 2")
    n_windows = num_windows(len(data), block_size)
    mine = list(range(rank, n_windows, world))
    per_process = math.ceil(n_windows / world)
    rows = min(batch_size, per_process)  # windows per pass: every pass the same shape (one compilation)
    mine += [-1] * (math.ceil(per_process / rows) * rows - len(mine))  # the same passes on every process
    batches = (window_batch(data, mine[lo : lo + rows], block_size) for lo in range(0, per_process, rows))
    nll_sum, tokens, n_bytes = loss_totals(model, batches, accelerator, byte_lengths).tolist()
    loss = nll_sum / tokens
    return EvalResult(
        loss=loss,
        perplexity=math.exp(loss),
        bits_per_byte=nll_sum / math.log(2) / n_bytes if n_bytes else float("nan"),
        tokens=int(tokens),
        bytes=int(n_bytes),
        windows=n_windows,
        block_size=block_size,
        processes=world,
    )


def sampled_losses(
    model: torch.nn.Module,
    splits: Iterable[tuple[str, TokenStream]],
    seed: int,
    windows: int,
    block_size: int,
    batch_size: int,
    accelerator: Accelerator,
) -> dict[str, float]:
    """The evaluation during training: mean loss (``NAME/loss``) over ``windows`` fixed windows of
    each split (``gpt.data.eval_window_starts``), shared out over the processes.

    Every process runs the same number of passes, padding its share with ignored windows; the result
    does not depend on the number of processes. Every pass has the same batch shape, so a compiled
    model compiles evaluation once.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = math.ceil(windows / world)
    rows = min(batch_size, per_rank)  # windows per pass, the last pass padded up to it
    out = {}
    for split_id, (name, data) in enumerate(splits):
        starts = eval_window_starts(seed, split_id, windows, len(data), block_size)
        mine = list(starts[rank::world])
        padded = mine + [starts[0]] * (math.ceil(per_rank / rows) * rows - len(mine))  # any window, ignored
        batches = (
            start_batch(data, padded[lo : lo + rows], min(rows, max(0, len(mine) - lo)), block_size)
            for lo in range(0, per_rank, rows)
        )
        nll_sum, tokens, _ = loss_totals(model, batches, accelerator).tolist()
        out[f"{name}/loss"] = nll_sum / tokens
    return out


def start_batch(data: TokenStream, starts: list[int], real: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, T) of the windows at token offsets ``starts``; targets of the rows
    after the first ``real`` (padding) are -1, ignored."""
    x, y = to_inputs_targets(data.windows(starts, block_size + 1))
    y[real:] = -1
    return x, y


def format_table(result: EvalResult, title: str) -> str:
    last = (result.tokens - 1) % result.block_size + 1
    rows = [
        ("loss (nats/token)", f"{result.loss:.4f}"),
        ("perplexity", f"{result.perplexity:.3f}"),
        ("bits per byte", f"{result.bits_per_byte:.4f}"),
        ("tokens", f"{result.tokens:,}"),
        ("bytes", f"{result.bytes:,}"),
        ("windows", f"{result.windows:,} of {result.block_size} tokens (the last one {last})"),
        ("processes", str(result.processes)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join([title] + [f"  {name:<{width}}  {value}" for name, value in rows])


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def final_evaluation(
    accelerator: Accelerator,
    model: torch.nn.Module,
    data: TokenStream,
    tokenizer: Tokenizer,
    block_size: int,
    batch_size: int,
    out_dir: str | Path,
    step: int,
    label: str = "val",
) -> dict[str, float]:
    """The last evaluation of a training run: the full pass over val, logged (final/val/*) and written
    to out_dir/eval.json. Call on every process; returns the logged metrics. ``label`` names another
    split (a mixture's val/<dataset>: final/val/<dataset>/*, eval-val-<dataset>.json)."""
    result = evaluate_split(model, data, token_byte_lengths(tokenizer), block_size, batch_size, accelerator)
    keys = ("loss", "perplexity", "bits_per_byte", "tokens", "bytes")
    metrics = {f"final/{label}/{k}": getattr(result, k) for k in keys}
    accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        checkpoint = ckpt.checkpoints_dir(out_dir) / ckpt.step_dir_name(step)
        name = "eval.json" if label == "val" else f"eval-{label.replace('/', '-')}.json"
        write_json(
            Path(out_dir) / name,
            {"step": step, "checkpoint": str(checkpoint), "split": label} | result.as_dict(),
        )
        print(format_table(result, f"final evaluation at step {step}, the whole {label} split:"), flush=True)
    return metrics


def final_evaluation_done(out_dir: str | Path, step: int) -> bool:
    """Whether out_dir/eval.json holds the final evaluation of ``step`` (a run stopped during its
    final evaluation has a checkpoint at its last step but no such file: a restart runs it)."""
    try:
        return json.loads((Path(out_dir) / "eval.json").read_text()).get("step") == step
    except (OSError, ValueError):
        return False


def run_directory(export: Path) -> Path:
    """The run directory of an export inside a checkpoint (out_dir/checkpoints/step-N/model), else the export."""
    checkpoint = export.parent
    if (checkpoint / ckpt.TRAINER_STATE).is_file() and checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return export


def dataset_of(export: Path, accelerator: Accelerator) -> Path:
    """The dataset folder the model was trained on, from its checkpoint's saved config."""
    state_file = export.parent / ckpt.TRAINER_STATE
    if not state_file.is_file():
        raise UserError(
            f"{export} is not inside a checkpoint, so it does not say what data it was trained on; pass --data"
        )
    data_cfg = ckpt.read_trainer_state(export.parent)["config"]["data"]
    with accelerator.local_main_process_first():  # one process per machine prepares a missing built-in set
        return ensure_dataset(data_cfg["root"], data_cfg["dataset"])


def final_evaluations(
    accelerator: Accelerator,
    model: torch.nn.Module,
    mixture: Mixture,
    tokenizer: Tokenizer,
    block_size: int,
    batch_size: int,
    out_dir: str | Path,
    step: int,
) -> dict[str, float]:
    """``final_evaluation`` of every val split of the run's data (each dataset of a mixture), with
    the mixture's weighted means."""
    final: dict[str, float] = {}
    for label, data in mixture.final_splits():
        final |= final_evaluation(accelerator, model, data, tokenizer, block_size, batch_size, out_dir, step, label)
    return mixture.with_weighted_means(final)
