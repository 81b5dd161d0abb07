"""Experiment trackers (tracking.loggers): what a run writes to them, and the check of their names."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt import trackers
from gpt.config import Config, load_config
from gpt.errors import UserError

import wandb_offline
from conftest import TINY, run_script

SHORT = [*TINY, "train.max_steps=10", "train.final_eval=false", "train.eval_samples=0"]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tensorboard_and_wandb(tmp_path_factory, data_root):
    """One tiny run logging to TensorBoard and to W&B (offline) at once."""
    out = tmp_path_factory.mktemp("tracking") / "run"
    loggers = ["tracking.loggers=tensorboard,wandb", "wandb.mode=offline", "wandb.project=tracked"]
    args = [*SHORT, "train.checkpoint_interval=5", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}"]
    r = run_script("train.py", *args, *loggers)
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_tensorboard_holds_the_train_losses_of_metrics_jsonl(tensorboard_and_wandb):
    out, r = tensorboard_and_wandb
    logs = out / "tracking" / "tracked"  # out_dir/tracking/<project>
    assert f"tensorboard --logdir {out / 'tracking'}" in r.stdout
    events = assert_train_losses_match(logs, out)
    assert {e.step for e in events.Scalars("eval/val/loss")} == {10}
    hparams = next(logs.glob("*/hparams.yml")).read_text()  # the settings, flattened for TensorBoard
    assert "model.n_layer: 2" in hparams and "derived.accumulation_steps: 1" in hparams
    assert "tracking.loggers: tensorboard,wandb" in hparams


def assert_train_losses_match(logs: Path, out: Path):
    """TensorBoard's train/loss, read back with its own reader, is metrics.jsonl's at the same steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logs))
    events.Reload()
    logged = {m["step"]: m for m in metrics(out)}
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == [1, 5, 10]  # step 1, then every train.log_interval=5
    for event in events.Scalars("train/loss"):  # TensorBoard keeps scalars as float32
        assert event.value == float(np.float32(logged[event.step]["train/loss"]))
    return events


def test_a_resume_hides_what_tensorboard_got_after_the_checkpoint(tensorboard_and_wandb, data_root, tmp_path):
    src, _ = tensorboard_and_wandb
    out = tmp_path / "run"
    shutil.copytree(src, out)
    shutil.rmtree(out / "checkpoints" / "step-0000010")  # as if stopped after logging step 10, before saving it
    args = [*SHORT, "train.checkpoint_interval=5", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}"]
    r = run_script("train.py", *args, "tracking.loggers=tensorboard", "wandb.project=tracked", "resume=true")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "at step 5" in r.stdout
    assert_train_losses_match(out / "tracking" / "tracked", out)  # step 10 once, from the resumed run
    # W&B was not a logger this time; the run id is kept for a later resume with it
    before = json.loads((src / "checkpoints" / "step-0000010" / "trainer_state.json").read_text())
    after = json.loads((out / "checkpoints" / "step-0000010" / "trainer_state.json").read_text())
    assert after["wandb_id"] == before["wandb_id"] is not None


def test_wandb_next_to_tensorboard_keeps_its_run(tensorboard_and_wandb):
    out, _ = tensorboard_and_wandb
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_offline.history(run_file)
    for m in metrics(out):
        if "train/loss" in m:
            assert history[m["step"]]["train/loss"] == pytest.approx(m["train/loss"])
    assert wandb_offline.config(run_file)["model"]["n_layer"] == 2  # nested, as W&B shows it
    state = json.loads((out / "checkpoints" / "step-0000010" / "trainer_state.json").read_text())
    assert wandb_offline.run_id(run_file) == state["wandb_id"]


def test_no_loggers_writes_metrics_jsonl_only(tmp_path, data_root):
    out = tmp_path / "run"
    args = [*SHORT, "train.max_steps=2", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}"]
    r = run_script("train.py", *args, "tracking.loggers=[]", "wandb.mode=offline")  # W&B is not a logger here
    assert r.returncode == 0, r.stdout + r.stderr
    assert [m["step"] for m in metrics(out) if "train/loss" in m] == [1, 2]
    assert not (out / "wandb").exists() and not (out / "tracking").exists()
    state = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["wandb_id"] is None


def test_an_unknown_tracker_is_one_line_before_training(tmp_path):
    r = run_script("train.py", "tracking.loggers=wandb,tensorbord", f"out_dir={tmp_path / 'run'}")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "unknown tracker 'tensorbord' (did you mean tensorboard?)" in line and "mlflow" in line
    assert not (tmp_path / "run").exists()


def test_a_tracker_without_its_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(trackers, "find_spec", lambda module: None)  # as if no tracker package were installed
    with pytest.raises(UserError, match=r"its package is not installed: pip install tensorboard"):
        load_config(["tracking.loggers=tensorboard"])
    with pytest.raises(UserError, match=r"its package is not installed: pip install wandb"):
        load_config(["wandb.mode=offline"])  # the default loggers: wandb
    assert load_config(["wandb.mode=disabled"]).tracking.loggers == ["wandb"]  # switched off: wandb not needed


def test_the_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert set(trackers.TRACKERS) == set(LOGGER_TYPE_TO_CLASS)


def test_wandb_starts_first_and_not_when_disabled(monkeypatch):
    from gpt.tracking import trackers_to_start

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = Config()
    cfg.tracking.loggers = ["tensorboard", "wandb"]
    cfg.wandb.mode = "offline"
    assert trackers_to_start(cfg) == ["wandb", "tensorboard"]  # a failed online W&B start is retried first
    cfg.wandb.mode = "disabled"
    assert trackers_to_start(cfg) == ["tensorboard"]
    cfg.tracking.loggers = ["wandb"]
    assert trackers_to_start(cfg) is None
