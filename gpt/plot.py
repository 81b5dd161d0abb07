"""Loss curves from the ``metrics.jsonl`` of one or more runs, against tokens seen, as a PNG.

    python -m gpt.plot out/default                          # writes loss.png here
    python -m gpt.plot out/small out/deeper --out compare.png --title "width vs depth"
    python -m gpt.plot --help

Each run gets one colour: a thin line for the training loss logged every ``train.log_interval``
steps, and a thick line with markers for the validation loss at each evaluation. Training writes
the same picture of itself to ``OUT_DIR/loss.png`` at every evaluation.

From Python (a notebook shows the returned figure)::

    from gpt.plot import plot_runs
    plot_runs(["out/small", "out/deeper"], "compare.png")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt.config import NON_EMPTY, doc, parse_flags
from gpt.errors import UserError, run_main

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The logged records of a run, one per step, in step order.

    A run resumed from a checkpoint older than its last log line logs those steps again; the later
    record of a step wins, so the curve shows what the resumed run did. The final evaluation (its
    ``final/*`` metrics) is logged as a record of its own at the last step: it joins that step's
    record instead of replacing it.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        if not Path(run_dir).exists():
            raise UserError(f"{run_dir} does not exist; pass the out_dir of a training run")
        raise UserError(f"{run_dir} has no {METRICS_FILE}; pass the out_dir of a training run")
    by_step: dict[int, dict[str, Any]] = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a last line cut short by a crash
            raise UserError(f"{path} line {number} is not JSON") from None
        if "step" in record and "tokens" in record:
            step = record["step"]
            if _is_final_evaluation(record):
                by_step[step] = by_step.get(step, {}) | record
            else:
                by_step[step] = record  # the later record of a step replaces the earlier one
    return [by_step[s] for s in sorted(by_step)]


def _is_final_evaluation(record: dict[str, Any]) -> bool:
    metrics = [k for k in record if k not in ("step", "tokens")]
    return bool(metrics) and all(k.startswith("final/") for k in metrics)


def record_at_step(run_dir: str | Path, step: int) -> dict[str, Any]:
    """What a run logged at ``step`` (its final evaluation included), without step and tokens;
    empty when the run logged nothing there or has no metrics.jsonl."""
    if not (Path(run_dir) / METRICS_FILE).is_file():
        return {}
    by_step = {r["step"]: r for r in read_metrics(run_dir)}
    return {k: v for k, v in by_step.get(step, {}).items() if k not in ("step", "tokens")}


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["tokens"], r[key]) for r in records if r.get(key) is not None]  # null: a non-finite value
    return [p[0] for p in points], [p[1] for p in points]


def _labels(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths where two runs share a folder name."""
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in run_dirs]


def plot_runs(run_dirs: list[str | Path], out_path: str | Path, title: str = ""):
    """Draw the train and val loss of each run against tokens seen into ``out_path`` (PNG).

    The file is replaced atomically, so an image viewer never shows half a picture. Returns the
    matplotlib Figure (built without pyplot: no display and no global backend are touched).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    dirs = [Path(d) for d in run_dirs]
    runs = [read_metrics(d) for d in dirs]
    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(dirs))]
    for records, label, color in zip(runs, _labels(dirs), colors, strict=True):
        prefix = f"{label}: " if len(dirs) > 1 else ""
        x, y = _series(records, "train/loss")
        if not x:  # a run too short to log its training loss: the evaluation's train loss
            x, y = _series(records, "eval/train/loss")
        if x:
            ax.plot(x, y, color=color, linewidth=1.0, alpha=0.55, label=f"{prefix}train")
        x, y = _series(records, "eval/val/loss")
        if x:
            ax.plot(x, y, color=color, linewidth=2.2, marker="o", markersize=4, label=f"{prefix}val")
    if not ax.lines:
        raise UserError(f"no losses logged yet in {', '.join(str(d) for d in dirs)}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small", ncols=1 if len(dirs) < 5 else 2)
    if len(dirs) == 1:
        _add_step_axis(ax, runs[0])
    ax.set_title(title or ("Loss of " + ", ".join(_labels(dirs))))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out_path)
    return fig


def _add_step_axis(ax: Any, records: list[dict[str, Any]]) -> None:
    """Optimizer steps along the top, when tokens per step is the same throughout the run."""
    ratios = {r["tokens"] / r["step"] for r in records if r["step"] > 0}
    if len(ratios) != 1:
        return
    (per_step,) = ratios
    top = ax.secondary_xaxis("top", functions=(lambda t: t / per_step, lambda s: s * per_step))
    top.set_xlabel("optimizer steps")


@dataclass
class PlotOptions:
    """The arguments of python -m gpt.plot."""

    run_dirs: list[str] = doc([], "out_dir of a run (holds metrics.jsonl); one or more.", positional=True)
    out: str = doc("loss.png", "PNG file to write.", check=NON_EMPTY)
    title: str = doc("", "Figure title; empty: the run names.")


def main(argv: list[str]) -> int:
    args = parse_flags(PlotOptions, argv, "python -m gpt.plot", __doc__)
    plot_runs(args.run_dirs, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
