"""End to end, as a user runs it: train.py, then sample.py, in subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt.checkpoint import latest_checkpoint
from gpt.config import TrainConfig
from gpt.data import TokenStream, split_files
from gpt.export import load_exported

import wandb_offline
from conftest import ROOT, TINY, env, free_port, metrics, run_script


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One tiny run with W&B offline, shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    r = run_script(
        "train.py",
        *TINY,
        f"data.root={data_root}",
        "data.dataset=tiny",
        f"out_dir={out}",
        "wandb.mode=offline",
        "wandb.tags=test,tiny",
        "wandb.log_model=true",
        "train.peak_tflops=0.05",  # a made-up peak, so that MFU is logged on CPU
        cwd=out.parent,
        WANDB_DATA_DIR=str(out.parent / "wandb-data"),  # W&B stages artifacts here, not in the home folder
        WANDB_PROJECT="from-env",
        WANDB_RUN_GROUP="group-from-env",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out, r


def test_training_lowers_the_loss_and_writes_a_checkpoint(trained):
    out, r = trained
    logged = metrics(out)
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert [m["step"] for m in logged if "train/loss" in m] == [1, 5, 10, 15, 20]  # step 1: a first line at once
    assert losses[-1] < losses[0] - 0.3
    assert latest_checkpoint(out).name == "step-0000020"
    assert "accumulation steps" in r.stdout and "wandb sync" in r.stdout
    assert "\nstep 1 | loss " in r.stdout  # the first step's line, before log_interval steps have run


def test_export_loads_into_a_plain_model(trained):
    out, _ = trained
    model, tokenizer, meta = load_exported(out)
    assert meta["step"] == 20 and meta["model"]["n_layer"] == 2 and tokenizer.vocab_size == model.cfg.vocab_size
    assert np.isfinite(meta["eval/val/loss"])
    logits, _ = model(torch.tensor([tokenizer.encode("ROMEO:")]))
    assert logits.shape == (1, 6, tokenizer.vocab_size)


def test_wandb_offline_run_holds_the_logged_losses(trained):
    out, _ = trained
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_offline.history(run_file)
    for m in metrics(out):
        for key in ("train/loss", "eval/val/loss"):
            if key in m:
                assert history[m["step"]][key] == pytest.approx(m[key])
    config = wandb_offline.config(run_file)
    assert config["model"]["n_layer"] == 2 and config["derived"]["accumulation_steps"] == 1
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert wandb_offline.run_id(run_file) == state["wandb_id"]
    info = wandb_offline.run_info(run_file)  # from the config, else the WANDB_* variables, else defaults
    assert info == {"project": "from-env", "name": "tiny", "group": "group-from-env", "tags": ["test", "tiny"],
                     "notes": ""}  # fmt: skip
    assert config["derived"]["tokens_per_step"] == 8 * 32 and config["derived"]["world_size"] == 1


def offline_run_file(out: Path) -> Path:
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    return run_file


def test_wandb_metrics_are_against_tokens_and_include_memory(trained):
    out, _ = trained
    run_file = offline_run_file(out)
    assert wandb_offline.metric_definitions(run_file) == {"tokens": "", "*": "tokens"}
    history = wandb_offline.history(run_file)
    tokens_per_step = 8 * 32  # train.batch_size x model.block_size
    for m in metrics(out):
        row = history[m["step"]]
        assert row["tokens"] == m["tokens"] == m["step"] * tokens_per_step
        if "train/loss" in m:
            for key in ("lr", "grad_norm", "tokens_per_s", "step_ms", "memory/rss_peak_gib"):
                assert row[key] == pytest.approx(m[key])
            assert 0.05 < m["memory/rss_peak_gib"] < 64  # a real peak RSS of a Python process with torch


def test_wandb_table_of_samples_at_each_evaluation(trained):
    out, _ = trained
    tables = wandb_offline.tables(offline_run_file(out), "samples")
    assert sorted(tables) == [10, 20]  # train.eval_interval=10, max_steps=20
    local = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for step, table in tables.items():
        assert table["columns"] == ["step", "tokens", "sample", "text"]
        assert [row[:3] for row in table["data"]] == [[step, step * 256, i] for i in range(3)]  # train.eval_samples=3
        texts = [row[3] for row in table["data"]]
        assert texts == [r["text"] for r in local if r["step"] == step]
        assert all(t.startswith("\n") and len(t) > 50 for t in texts)  # prompt + up to 100 characters
    assert tables[10]["data"] != tables[20]["data"]  # the model changed between evaluations


def test_wandb_summary_holds_the_final_metrics_and_the_model_artifact(trained):
    out, _ = trained
    run_file = offline_run_file(out)
    final = [m for m in metrics(out) if "eval/val/loss" in m][-1]
    summary = wandb_offline.summary(run_file)
    assert summary["step"] == 20 and summary["tokens"] == 20 * 256
    assert summary["eval/val/loss"] == pytest.approx(final["eval/val/loss"])
    (model,) = [a for a in wandb_offline.artifacts(run_file) if a["type"] == "model"]
    assert model["name"] == f"model-{wandb_offline.run_id(run_file)}"
    assert sorted(model["aliases"]) == ["latest", "step-0000020"]
    assert model["files"] == ["config.json", "model.safetensors", "tokenizer.json"]


def test_loss_plot_is_written_at_each_evaluation(trained):
    out, _ = trained
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sample_prints_text(trained):
    out, _ = trained
    r = run_script(
        "sample.py", "--out_dir", str(out), "--max_new_tokens", "60", "--num_samples", "2", "--start", "ROMEO:"
    )
    assert r.returncode == 0, r.stderr
    assert "--- sample 1 of 2 ---\nROMEO:" in r.stdout and "--- sample 2 of 2 ---" in r.stdout
    assert len(r.stdout) > 2 * 60


def test_same_seed_same_samples(trained):
    out, _ = trained
    args = ["--out_dir", str(out), "--max_new_tokens", "40", "--seed", "5"]
    assert run_script("sample.py", *args).stdout == run_script("sample.py", *args).stdout


def test_resume_continues_from_the_latest_checkpoint(trained, data_root, tmp_path):
    src, _ = trained
    out = tmp_path / "resumed"
    import shutil

    shutil.copytree(src, out)
    r = run_script(
        "train.py",
        *TINY,
        f"data.root={data_root}",
        "data.dataset=tiny",
        f"out_dir={out}",
        "train.max_steps=30",
        "resume=true",
        "wandb.mode=offline",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at step 20" in r.stdout
    assert [m["step"] for m in metrics(out) if "train/loss" in m] == [1, 5, 10, 15, 20, 25, 30]
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len({wandb_offline.run_id(p) for p in runs}) == 1  # one W&B run, continued
    assert latest_checkpoint(out).name == "step-0000030"


def test_final_evaluation_is_the_full_val_pass_logged_and_written_beside_the_checkpoint(trained, data_root):
    out, r = trained
    final = json.loads((out / "eval.json").read_text())
    n_val = len(TokenStream(split_files(data_root / "tiny", "val")))
    assert final["step"] == 20 and final["split"] == "val" and final["tokens"] == n_val - 1
    assert final["checkpoint"].endswith("step-0000020") and "bits per byte" in r.stdout
    logged = [m for m in metrics(out) if "final/val/loss" in m]
    assert len(logged) == 1 and logged[0]["final/val/bits_per_byte"] == pytest.approx(final["bits_per_byte"])
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_offline.history(run_file)[20]["final/val/bits_per_byte"] == pytest.approx(final["bits_per_byte"])

    # the evaluation command, on the saved checkpoint, finds the run's data and gives the same figures
    cmd = [sys.executable, "-m", "gpt.evaluate", "--out_dir", str(out)]
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    by_command = json.loads((out / "eval-val.json").read_text())
    assert by_command["tokens"] == final["tokens"] and by_command["bytes"] == final["bytes"]
    assert by_command["loss"] == pytest.approx(final["loss"], rel=1e-9)


def test_mfu_is_logged_against_the_configured_peak(trained):
    out, r = trained
    assert "MFU against the configured peak (train.peak_tflops), 0.05 TFLOP/s" in r.stdout  # the log names it
    model, _, _ = load_exported(out)
    # N: the weights that multiply activations (the blocks' matrices and the tied head); lookups, biases
    # and norm gains are left out
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    n_params = sum(p.numel() for p in matrices) + model.wte.weight.numel()
    per_token = 6 * n_params + 12 * 2 * 32 * 32  # 6N + 12 * n_layer * n_embd * block_size
    run_file = offline_run_file(out)
    history = wandb_offline.history(run_file)
    for m in metrics(out):
        if "train/loss" in m:
            assert m["mfu"] == pytest.approx(m["tokens_per_s"] * per_token / 0.05e12)
            assert history[m["step"]]["mfu"] == pytest.approx(m["mfu"])


def test_time_budget_ends_training_and_decays_the_lr(tmp_path, data_root):
    out = tmp_path / "budget"
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}", "train.max_steps=1000000"]
    budget = ["train.time_budget_s=15", "train.min_lr=0", "train.log_interval=1", "train.eval_interval=100000"]
    r = run_script("train.py", *args, *budget)
    assert r.returncode == 0, r.stderr
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in logged if "train/loss" in r]  # the training steps' records (not the final evaluation)
    last = records[-1]
    assert 5 < last["step"] < 1_000_000 and "eval/val/loss" in last  # stopped by the clock, then evaluated
    assert max(r["lr"] for r in records) == pytest.approx(TrainConfig().learning_rate)  # warm-up to the top...
    assert last["lr"] < 0.05 * TrainConfig().learning_rate  # ...and the cosine has come down with the time
    state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
    assert 15 <= state["elapsed_s"] < 15 + 120


@pytest.mark.slow
def test_wandb_without_network_falls_back_to_offline(tmp_path, data_root):
    """Credentials, but W&B's address refuses connections: the run trains, offline, and says so."""
    out = tmp_path / "run"
    args = [*TINY, "train.max_steps=2", "train.final_eval=false", "train.eval_samples=0", f"data.root={data_root}"]
    args += ["data.dataset=tiny", f"out_dir={out}", "wandb.init_timeout_s=1"]
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        env=env(
            WANDB_MODE="online", WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",
            WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
            WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        ),  # fmt: skip
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("W&B could not start the run online")]
    assert "continuing offline" in line and "wandb sync " in line
    run_dir = line.split("wandb sync ")[-1]
    assert os.path.isdir(run_dir) and "offline-run-" in run_dir
    assert (out / "checkpoints" / "step-0000002").is_dir()
