"""The evaluation command (python -m gpt.evaluate): one process or two give the same figures, bad input is
one line, the figures are printed before they are written."""

import json
import subprocess
import sys

import pytest
import torch

from gpt.checkpoint import save_weights, write_export
from gpt.config import ModelConfig
from gpt.data import TokenStream, split_files
from gpt.errors import UserError
from gpt.model import GPT
from gpt.tokenizer import load_tokenizer

from conftest import CPU_CONFIG, accelerate_launch, assert_one_line, env, free_port, run_module


@pytest.fixture(scope="module")
def export(tmp_path_factory, data_root):
    """A random GPT with the tiny dataset's tokenizer, as a portable export outside any run."""
    folder = tmp_path_factory.mktemp("export")
    tok = load_tokenizer(data_root / "tiny" / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=tok.vocab_size)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    save_weights(model.state_dict(), folder / "weights.safetensors")
    write_export(folder / "model", folder / "weights.safetensors", cfg, tok, {"step": 7})
    return folder / "model"


def evaluate_command(*args: str, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gpt.evaluate", *args]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.slow
def test_two_processes_give_what_one_process_gives(tmp_path, export, data_root):
    common = ["--out_dir", str(export), "--data", str(data_root / "tiny"), "--batch_size", "4"]
    one = evaluate_command(*common, "--json", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    two = accelerate_launch(
        "--config_file", CPU_CONFIG, "--num_processes", "2", "--main_process_port", str(free_port()),
        "-m", "gpt.evaluate", *common, "--json", str(tmp_path / "two.json"), cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert (a["processes"], b["processes"]) == (1, 2)
    n_val = len(TokenStream(split_files(data_root / "tiny", "val")))
    assert a["tokens"] == b["tokens"] == n_val - 1 and a["bytes"] == b["bytes"]
    for key in ("loss", "perplexity", "bits_per_byte"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert "bits per byte" in one.stdout and "bits per byte" in two.stdout
    assert two.stdout.count("bits per byte") == 1  # one table, from the main process


def test_command_refuses_bad_input_with_one_line(tmp_path, export, data_root):
    r = evaluate_command("--out_dir", str(export))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "pass --data" in r.stderr
    r = evaluate_command("--out_dir", str(export), "--data", str(data_root / "tiny"), "--split", "test")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "no token files for split 'test'" in r.stderr


def test_evaluate_refuses_an_unwritable_destination_before_the_pass(tmp_path, char_export, data_root):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    common = ["--out_dir", str(char_export), "--data", str(data_root / "tiny")]
    r = run_module("gpt.evaluate", *common, "--json", str(blocker / "eval.json"))
    assert_one_line(r, f"cannot write the results to {blocker / 'eval.json'}: {blocker} is a file")
    assert "loss" not in r.stdout  # refused before the pass


def test_evaluate_prints_its_figures_before_writing_them(tmp_path, char_export, data_root, capsys, monkeypatch):
    from gpt import evaluate, evaluation

    def read_only(path, record):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(evaluation, "write_json", read_only)
    args = ["--out_dir", str(char_export), "--data", str(data_root / "tiny"), "--json", str(tmp_path / "e.json")]
    with pytest.raises(UserError, match="could not write .*e.json \\(Permission denied\\); the figures are above"):
        evaluate.main(args)
    assert "bits per byte" in capsys.readouterr().out
