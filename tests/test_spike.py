"""The loss-spike guard (gpt.spike): its decisions, an injected spike in the trainer's own step, resume."""

import json

import pytest
import torch

from gpt.config import load_config
from gpt.errors import UserError
from gpt.spike import SpikeGuard

from conftest import TINY, run_script


def test_a_spike_is_a_value_far_above_the_median_of_a_full_window():
    guard = SpikeGuard(loss_ratio=2.0, grad_ratio=0.0, window=3)
    assert [guard.spike(v, 1.0) for v in (5.0, 1.0, 1.2)] == [None] * 3  # window filling: never a spike
    assert guard.spike(2.5, 1.0) is not None  # > 2 x median 1.2
    assert guard.spike(2.5, 1e9) is not None and guard.skipped == 2  # spikes do not enter the window
    assert guard.spike(2.0, 1e9) is None  # not above 2 x 1.2; the gradient ratio is off
    assert list(guard.losses) == [1.0, 1.2, 2.0]
    assert guard.spike(float("nan"), 1.0) is not None
    grads = SpikeGuard(loss_ratio=0.0, grad_ratio=10.0, window=2, state={"losses": [1, 1], "grad_norms": [1, 2]})
    assert grads.spike(100.0, 16.0) is not None and grads.spike(100.0, 14.0) is None
    again = SpikeGuard(2.0, 0.0, 3, state=guard.state())
    assert again.state() == guard.state() and again.skipped == 3


def test_an_injected_spike_is_skipped_and_leaves_the_weights_as_they_were(tmp_path, data_root):
    from gpt.schedule import lr_at
    from gpt.trainer import batch_stream, setup, train_step

    cfg = load_config([*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={tmp_path / 'run'}",
                       "wandb.mode=disabled", "train.spike_loss_ratio=1.5", "train.spike_window=4",
                       "train.learning_rate=1e-2", "train.warmup_steps=1"])  # fmt: skip
    run = setup(cfg)
    model = run.accelerator.unwrap_model(run.model)
    batches = batch_stream(run, 0)
    try:
        for step in range(15):
            train_step(run, batches, lr_at(step, cfg.train), run.guard)
        x, y = next(iter(batches.next_step()))

        class Corrupted:  # the next batch, its targets replaced by the token the model finds least likely
            def next_step(self):
                with torch.no_grad():
                    logits, _ = model(x)
                yield x, logits.argmin(dim=-1)

        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss, _ = train_step(run, Corrupted(), lr_at(15, cfg.train), run.guard)
        assert run.guard.skipped == 1 and loss.item() > 1.5 * max(run.guard.losses)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing applied
        train_step(run, batches, lr_at(16, cfg.train), run.guard)  # training goes on
        assert run.guard.skipped == 1
        assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        batches.close()


def test_the_guard_is_logged_and_survives_a_resume(tmp_path, data_root):
    out = tmp_path / "run"
    common = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "train.spike_window=3",
              "train.spike_grad_ratio=1000", "train.final_eval=false"]  # fmt: skip
    assert run_script("train.py", *common, "train.max_steps=10").returncode == 0
    saved = json.loads((out / "checkpoints" / "step-0000010" / "trainer_state.json").read_text())["spike_guard"]
    assert len(saved["grad_norms"]) == 3 and saved["skipped"] == 0
    r = run_script("train.py", *common, "train.max_steps=20")
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["spike_skipped_steps"] for rec in records if rec.get("step") == 20 and "train/loss" in rec] == [0]
    assert "0 spikes skipped" in r.stdout


@pytest.mark.parametrize("bad", ["train.spike_window=0", "train.spike_loss_ratio=-1", "train.spike_grad_ratio=nan"])
def test_bad_guard_settings_are_one_clear_error(bad):
    with pytest.raises(UserError, match=bad.split("=")[0]):
        load_config([bad])
