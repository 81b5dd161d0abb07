"""Learning-rate schedules (gpt.schedule): the trace of each, WSD continued past its old end."""

import json
import math
import shutil

import pytest

from gpt.checkpoint import complete_checkpoints
from gpt.config import TrainConfig, load_config
from gpt.errors import UserError
from gpt.schedule import lr_at

from conftest import TINY, run_script


def trace(**fields) -> list[float]:
    t = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_steps=2, max_steps=12, **fields)
    return [lr_at(step, t) for step in range(t.max_steps)]


def test_every_schedule_warms_up_then_follows_its_shape():
    # after 2 warm-up steps, progress runs 0, 0.1, ..., 0.9 over the 10 remaining steps
    cosine, linear, constant = trace(), trace(schedule="linear"), trace(schedule="constant")
    for lrs in (cosine, linear, constant):
        assert lrs[:2] == [0.5, 1.0]
    assert cosine[2:] == pytest.approx([0.1 + 0.45 * (1 + math.cos(math.pi * k / 10)) for k in range(10)])
    assert linear[2:] == pytest.approx([1.0 - 0.9 * k / 10 for k in range(10)])
    assert constant[2:] == [1.0] * 10


@pytest.mark.parametrize(
    "shape, decayed",
    [
        ("linear", [1 - 0.9 * q for q in (0.25, 0.5, 0.75)]),
        ("cosine", [0.1 + 0.45 * (1 + math.cos(math.pi * q)) for q in (0.25, 0.5, 0.75)]),
        ("sqrt", [1 - 0.9 * math.sqrt(q) for q in (0.25, 0.5, 0.75)]),
    ],
)
def test_wsd_holds_then_decays_over_its_last_fraction(shape, decayed):
    lrs = trace(schedule="wsd", decay_fraction=0.4, decay_shape=shape)
    # progress 0..0.6 holds the peak; 0.7, 0.8, 0.9 are a quarter, half and three quarters into the decay
    assert lrs[2:9] == [1.0] * 7
    assert lrs[9:] == pytest.approx(decayed)
    t = TrainConfig(learning_rate=1.0, min_lr=0.1, schedule="wsd", decay_fraction=0.4, decay_shape=shape)
    assert lr_at(500, t, progress=1.0) == pytest.approx(0.1) and lr_at(500, t, progress=0.5) == 1.0  # time budget


def test_a_bad_decay_fraction_is_one_clear_error():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(UserError, match="train.decay_fraction"):
            load_config([f"train.decay_fraction={bad}"])


def logged_lrs(out) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in records if "lr" in r}


def test_a_wsd_checkpoint_in_its_stable_phase_continues_longer(tmp_path, data_root):
    """A 20-step WSD run stopped after its step-10 checkpoint (still stable: the decay is its last 4 steps),
    resumed with max_steps=40, holds the peak to step 33 and decays over the last steps instead."""
    common = [*TINY, "train.log_interval=1", "train.warmup_steps=0", "train.schedule=wsd", "train.decay_fraction=0.2",
              "train.learning_rate=1e-3", "train.min_lr=1e-4", "train.final_eval=false",
              f"data.root={data_root}", "data.dataset=tiny", f"out_dir={tmp_path / 'run'}"]  # fmt: skip
    first = run_script("train.py", *common, "train.max_steps=20")
    assert first.returncode == 0, first.stderr[-2000:]
    assert logged_lrs(tmp_path / "run")[20] < 1e-3  # the planned run decayed at its end
    shutil.rmtree(complete_checkpoints(tmp_path / "run")[-1])  # as if it had stopped after step 10
    longer = run_script("train.py", *common, "train.max_steps=40")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "resumed from" in longer.stdout and "at step 10" in longer.stdout
    lrs = logged_lrs(tmp_path / "run")  # the record of step s holds the rate of lr_at(s - 1), progress (s - 1) / 40
    assert [lrs[s] for s in range(11, 34)] == [1e-3] * 23  # progress up to 0.8: stable
    assert lrs[34] < 1e-3 and lrs[40] == pytest.approx(1e-4 + (1e-3 - 1e-4) * (1 - 0.875))  # 7/8 into the decay


def test_lr_follows_the_time_budget_when_given_progress():
    t = TrainConfig(learning_rate=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=1000)
    assert lr_at(4, t, progress=0.9) == pytest.approx(5e-4)  # warm-up goes by steps
    assert lr_at(500, t, progress=0.0) == pytest.approx(1e-3)
    assert lr_at(20, t, progress=0.5) == pytest.approx(5.5e-4)  # half the budget: half-way down the cosine
    assert lr_at(20, t, progress=1.3) == pytest.approx(1e-4)
    assert lr_at(505, t) == pytest.approx(5.5e-4)  # without a budget, by steps as before
