"""Loss curves from metrics.jsonl: what is drawn, against what, and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.errors import UserError
from gpt.plot import plot_runs, read_metrics, record_at_step

from conftest import ROOT, env


def write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def fake_run(folder: Path, shift: float = 0.0, tokens_per_step: int = 100) -> Path:
    rows = []
    for step in range(10, 110, 10):
        row = {"step": step, "tokens": step * tokens_per_step, "train/loss": 3.0 - step / 100 + shift}
        if step % 50 == 0:
            row |= {"eval/train/loss": 2.9 - step / 100 + shift, "eval/val/loss": 3.1 - step / 100 + shift}
        rows.append(row)
    return write_run(folder, rows)


def test_plot_draws_train_and_val_of_each_run_against_tokens(tmp_path):
    a = fake_run(tmp_path / "a")
    b = fake_run(tmp_path / "b", shift=0.2, tokens_per_step=200)
    fig = plot_runs([a, b], tmp_path / "out.png")
    (ax,) = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert ax.get_xlabel() == "tokens seen" and "loss" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a: train", "a: val", "b: train", "b: val"]
    a_val, b_val = ax.lines[1], ax.lines[3]
    assert list(a_val.get_xdata()) == [5000, 10000] and list(b_val.get_xdata()) == [10000, 20000]
    assert list(b_val.get_ydata()) == pytest.approx([2.8, 2.3])
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"


def test_a_resumed_run_shows_the_later_record_of_a_step(tmp_path):
    run = write_run(
        tmp_path / "r",
        [{"step": 10, "tokens": 10, "train/loss": 3.0}, {"step": 20, "tokens": 20, "train/loss": 9.0},
         {"step": 20, "tokens": 20, "train/loss": 2.0}, {"step": 30, "tokens": 30, "train/loss": 1.0}],
    )  # fmt: skip
    assert [r["train/loss"] for r in read_metrics(run)] == [3.0, 2.0, 1.0]


def short_run(folder: Path) -> Path:
    """What a 3-step run with the default intervals writes: one record at its last step (train loss
    and evaluation), then the final evaluation's record at the same step."""
    final = {"final/val/loss": 3.5, "final/val/perplexity": 33.1, "final/val/bits_per_byte": 5.0}
    return write_run(
        folder,
        [{"train/loss": 4.0, "lr": 1e-4, "eval/train/loss": 3.9, "eval/val/loss": 3.95, "step": 3, "tokens": 6144},
         final | {"step": 3, "tokens": 6144}],
    )  # fmt: skip


def test_the_final_evaluation_joins_the_last_step_instead_of_replacing_it(tmp_path):
    (record,) = read_metrics(short_run(tmp_path / "short"))
    assert record["train/loss"] == 4.0 and record["eval/val/loss"] == 3.95 and record["final/val/loss"] == 3.5
    assert record_at_step(tmp_path / "short", 3)["final/val/bits_per_byte"] == 5.0
    assert record_at_step(tmp_path / "short", 4) == {} and record_at_step(tmp_path / "none", 3) == {}
    fig = plot_runs([tmp_path / "short", fake_run(tmp_path / "long")], tmp_path / "both.png")
    (ax,) = [ax for ax in fig.axes if ax.get_legend() is not None]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["short: train", "short: val", "long: train", "long: val"]
    assert list(ax.lines[1].get_ydata()) == [3.95]


def test_a_run_without_metrics_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no metrics.jsonl"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")


def test_plot_command_overlays_runs(tmp_path):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", shift=0.1)
    cmd = [sys.executable, "-m", "gpt.plot", str(a), str(b), "--out", str(tmp_path / "both.png")]
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "both.png").stat().st_size > 10_000
    r = subprocess.run([*cmd[:3], str(tmp_path / "nope")], cwd=ROOT, env=env(), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
