"""Realised shares of a weighted data mixture (gpt.mixture) against its weights.

    python bench/mixture_shares.py --weights 0.7,0.2,0.1 --steps 1000 --batch_size 32

Counts, over the given steps, the rows of each global batch that each dataset supplies, exactly as
training draws them (the choice depends only on seed and step, so no data is needed: each dataset is
a small synthetic token file). Prints the shares and their largest gap to the weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt.data import TokenStream, write_token_file  # noqa: E402
from gpt.mixture import Mixture, Source  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default="0.7,0.2,0.1")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    weights = np.array([float(w) for w in args.weights.split(",")])
    weights /= weights.sum()
    with tempfile.TemporaryDirectory() as tmp:
        sources = []
        for i, w in enumerate(weights):
            path = write_token_file(Path(tmp) / f"d{i}.tok", np.zeros(100, dtype=np.int64), 2, "synthetic")
            sources.append(Source(f"d{i}", float(w), TokenStream([path]), TokenStream([path])))
        rows = Mixture(sources, args.seed, block_size=8).rows_seen(range(args.steps), args.batch_size)
    shares = rows / rows.sum()
    print(f"{args.steps} steps x {args.batch_size} rows = {rows.sum():,} rows, seed {args.seed}")
    for w, share, n in zip(weights, shares, rows, strict=True):
        print(f"  weight {w:.3f}: {n:>7,} rows, share {share:.4f}")
    print(f"largest gap to the weights: {np.abs(shares - weights).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
