"""Weighted data mixtures: each row of a batch comes from one of several datasets, chosen by weight.

    python train.py data.mixture=web:0.7,books:0.2,code:0.1       # folders under data.root

Every row of optimizer step ``s``'s global batch picks its dataset with a generator seeded by
(seed, s), then its window inside that dataset's training split (anywhere, or at a document start
with ``data.align=document``) with a generator seeded by (seed, s, dataset). The batch is therefore
still a pure function of (seed, step): the same whatever the number of processes and accumulation
steps, and a resumed run continues it exactly. The realised shares follow the weights up to
sampling noise (about sqrt(w (1 - w) / rows) after ``rows`` rows).

The datasets must come from one tokenizer. Training logs the tokens each one has contributed
(``tokens/<name>``), each evaluation the val loss of each (``eval/val/<name>/loss``), and the final
evaluation each one's whole val split (``final/val/<name>/*``, ``eval-<name>.json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpt.data import DocumentStarts, step_window_starts
from gpt.errors import UserError
from gpt.token_files import TokenStream

_MIX_STREAM = 0x6D6978  # separates the dataset choices' random stream from the windows'


@dataclass
class Source:
    """One dataset of a mixture."""

    name: str
    weight: float  # normalised: the weights of a mixture sum to 1
    train: TokenStream
    val: TokenStream
    documents: DocumentStarts | None = None  # data.align=document


def parse_mixture(entries: list[str]) -> list[tuple[str, float]]:
    """``["web:0.7", "books:0.3"]`` -> [("web", 0.7), ("books", 0.3)], normalised; one clear error otherwise."""
    parsed: list[tuple[str, float]] = []
    for entry in entries:
        name, sep, weight_text = entry.rpartition(":")
        try:
            weight = float(weight_text)
        except ValueError:
            weight = math.nan
        if not sep or not name.strip() or not math.isfinite(weight):
            raise UserError(f"data.mixture entry {entry!r} is not NAME:WEIGHT (e.g. web:0.7)")
        if weight <= 0:
            raise UserError(f"data.mixture weight of {name!r} is {weight}; weights must be > 0 (leave a dataset out)")
        if name in (n for n, _ in parsed):
            raise UserError(f"data.mixture names {name!r} twice")
        parsed.append((name.strip(), weight))
    total = sum(w for _, w in parsed)
    return [(name, w / total) for name, w in parsed]


class Mixture:
    """Which dataset and window each row of a step's global batch reads."""

    def __init__(self, sources: list[Source], seed: int, block_size: int):
        self.sources, self.seed, self.block_size = sources, seed, block_size
        self.weights = np.array([s.weight for s in sources])

    def choices(self, step: int, batch_size: int) -> np.ndarray:
        """(batch_size,) dataset index of each row of step ``step``."""
        if len(self.sources) == 1:
            return np.zeros(batch_size, dtype=np.int64)
        return np.random.default_rng((self.seed, step, _MIX_STREAM)).choice(
            len(self.sources), batch_size, p=self.weights
        )

    def step_rows(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset index, window start) of every row of step ``step``'s global batch."""
        which = self.choices(step, batch_size)
        if len(self.sources) == 1:  # one dataset: exactly the windows of a run without a mixture
            (source,) = self.sources
            if source.documents is not None:
                return which, source.documents.step_starts(self.seed, step, batch_size)
            return which, step_window_starts(self.seed, step, batch_size, len(source.train), self.block_size)
        starts = np.empty(batch_size, dtype=np.int64)
        for j, source in enumerate(self.sources):
            rows = np.flatnonzero(which == j)
            rng = np.random.default_rng((self.seed, step, _MIX_STREAM, j + 1))
            if source.documents is not None:
                starts[rows] = source.documents.draw(rng, len(rows))
            else:
                starts[rows] = rng.integers(0, len(source.train) - self.block_size, size=len(rows))
        return which, starts

    def windows(self, which: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """The (rows, length) windows of the given rows, each read from its dataset's training split."""
        out = np.empty((len(which), length), dtype=np.int64)
        for j, source in enumerate(self.sources):
            rows = np.flatnonzero(which == j)
            if len(rows):
                out[rows] = source.train.windows(starts[rows], length)
        return out

    def rows_seen(self, steps: range, batch_size: int) -> np.ndarray:
        """(datasets,) rows each dataset contributed over ``steps``."""
        if len(self.sources) == 1:  # every row: no choices to replay (a resume at step 100k costs nothing)
            return np.array([len(steps) * batch_size], dtype=np.int64)
        counts = np.zeros(len(self.sources), dtype=np.int64)
        for step in steps:
            counts += np.bincount(self.choices(step, batch_size), minlength=len(self.sources))
        return counts

    # -- what the trainer logs -----------------------------------------------------------------------

    def eval_splits(self) -> list[tuple[str, TokenStream]]:
        """(label, stream) of each split the periodic evaluation reads: train and val, per dataset."""
        if len(self.sources) == 1:
            return [("train", self.sources[0].train), ("val", self.sources[0].val)]
        return [(f"{split}/{s.name}", getattr(s, split)) for s in self.sources for split in ("train", "val")]

    def final_splits(self) -> list[tuple[str, TokenStream]]:
        """(label, stream) of each split the final evaluation reads: val, per dataset."""
        if len(self.sources) == 1:
            return [("val", self.sources[0].val)]
        return [(f"val/{s.name}", s.val) for s in self.sources]

    def with_weighted_means(self, metrics: dict[str, float]) -> dict[str, float]:
        """A mixture's per-dataset metrics plus their weighted mean under the plain names
        (train/loss from train/<name>/loss, final/val/loss from final/val/<name>/loss, ...)."""
        if len(self.sources) == 1:
            return metrics
        first = f"/{self.sources[0].name}/"
        out = dict(metrics)
        for key in [k for k in metrics if first in k]:
            per_source = [metrics[key.replace(first, f"/{s.name}/")] for s in self.sources]
            out[key.replace(first, "/")] = float(np.dot(self.weights, per_source))
        return out

    def tokens_seen(self, rows: np.ndarray) -> dict[str, int]:
        """tokens/<name> for a mixture's log record (nothing for a single dataset)."""
        if len(self.sources) == 1:
            return {}
        return {f"tokens/{s.name}": int(n) * self.block_size for s, n in zip(self.sources, rows, strict=True)}


def describe_data(mixture: Mixture) -> str:
    """The start-up line that says what the training windows are read from."""
    parts = []
    for s in mixture.sources:
        docs = f", {len(s.documents):,} document starts" if s.documents is not None else ""
        parts.append(f"{s.name} ({len(s.train):,} train tokens{docs}, weight {s.weight:.3g})")
    where = "at document starts" if mixture.sources[0].documents is not None else "anywhere"
    return f"data: {'; '.join(parts)}; windows start {where}"
