"""Each bad input gives one clear line on stderr, a non-zero exit, and no traceback."""

import subprocess
import sys

import numpy as np
import pytest
from test_config import BAD_CONFIG

from gpt.prepare import main as prepare_main

from conftest import ROOT, TINY, assert_one_line, env, fake_export, run_script


def assert_clean_error(r, *fragments):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_config_key(tmp_path):
    r = run_script("train.py", "model.n_layers=2", cwd=tmp_path)
    assert_clean_error(r, "unknown config key 'model.n_layers'", "did you mean 'model.n_layer'")


def test_wrong_type(tmp_path):
    assert_clean_error(run_script("train.py", "train.max_steps=lots", cwd=tmp_path), "expects an integer")


def test_missing_token_files_name_the_prepare_command(tmp_path):
    r = run_script("train.py", *TINY, f"data.root={tmp_path}", "data.dataset=owt", cwd=tmp_path)
    assert_clean_error(r, f"no token files in {tmp_path / 'owt'}", "python -m gpt.prepare --input")


def test_corpus_shorter_than_the_context(tmp_path):
    assert prepare_main(["--input", str(make_text(tmp_path, "abcdefghij" * 30)), "--out", str(tmp_path / "short")]) == 0
    r = run_script(
        "train.py", *TINY, "model.block_size=64", f"data.root={tmp_path}", "data.dataset=short", cwd=tmp_path
    )
    assert_clean_error(r, "has only 30 tokens", "block_size is 64")


def test_corrupt_token_file_header(tmp_path, data_root):
    import shutil

    shutil.copytree(data_root / "tiny", tmp_path / "bad")
    val = tmp_path / "bad" / "val-000000.tok"
    val.write_bytes(val.read_bytes()[:-100])
    r = run_script("train.py", *TINY, f"data.root={tmp_path}", "data.dataset=bad", cwd=tmp_path)
    assert_clean_error(r, str(val), "truncated or corrupt")


def test_wrong_magic(tmp_path, data_root):
    import shutil

    shutil.copytree(data_root / "tiny", tmp_path / "bad")
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "bad" / "train-000000.tok")  # a nanoGPT-style bare .bin
    r = run_script("train.py", *TINY, f"data.root={tmp_path}", "data.dataset=bad", cwd=tmp_path)
    assert_clean_error(r, "is not a token file")


def test_prompt_with_unknown_characters(tmp_path):
    from gpt.tokenizer import CharTokenizer

    export = fake_export(tmp_path, CharTokenizer("abc \n"))
    r = run_script("sample.py", "--out_dir", str(export), "--start", "abc ☃ é")
    assert_clean_error(r, "2 character(s)", "'é'", "'☃'")


def test_sample_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_script("sample.py", "--out_dir", str(tmp_path / "empty"))
    assert_clean_error(r, "no checkpoint in", f"train first (python train.py out_dir={tmp_path / 'empty'})")
    (tmp_path / "out" / "shakespeare_char").mkdir(parents=True)  # the preset's out_dir: its command is named
    r = run_script("sample.py", "--out_dir", "out/shakespeare_char", cwd=tmp_path)
    assert_clean_error(r, "train first (python train.py shakespeare_char)")


def test_hf_export_errors_name_no_flag_it_does_not_take(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "gpt.hf", str(tmp_path / "missing"), str(tmp_path / "hf")],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_clean_error(r, f"{tmp_path / 'missing'} does not exist")
    assert "--out_dir" not in r.stderr


def test_a_bad_flag_is_called_a_flag(tmp_path):
    r = run_script("sample.py", "--num_samples", "many")
    assert_clean_error(r, "flag '--num_samples' expects an integer")
    assert "config key" not in r.stderr


def test_default_prompt_fits_a_vocabulary_without_a_newline(tmp_path):
    from gpt.tokenizer import CharTokenizer

    export = fake_export(tmp_path, CharTokenizer("abc "))
    r = run_script("sample.py", "--out_dir", str(export), "--max_new_tokens", "5", "--num_samples", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("--- sample 1 of 1 ---\n") and len(r.stdout.splitlines()[1]) == 6  # a + 5 new


def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    from gpt.tokenizer import CharTokenizer

    export = fake_export(tmp_path, CharTokenizer("abc \n"))
    cmd = [sys.executable, str(ROOT / "sample.py"), "--out_dir", str(export), "--max_new_tokens", "50"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `| head` does once it has its lines; here before the first one
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and stderr == ""


def test_corrupt_weights_are_named(tmp_path):
    from gpt.tokenizer import CharTokenizer

    export = fake_export(tmp_path, CharTokenizer("abc \n"))
    (export / "model.safetensors").write_bytes(b"garbage")
    r = run_script("sample.py", "--out_dir", str(export))
    assert_clean_error(r, str(export / "model.safetensors"))


def test_starting_fresh_over_a_run_is_refused(tmp_path, data_root):
    from gpt.checkpoint import MANIFEST

    (tmp_path / "run" / "checkpoints" / "step-0000010").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-0000010" / MANIFEST).write_text("{}")
    r = run_script(
        "train.py",
        *TINY,
        f"data.root={data_root}",
        "data.dataset=tiny",
        f"out_dir={tmp_path / 'run'}",
        "resume=false",
        cwd=tmp_path,
    )
    assert_clean_error(r, "already holds checkpoints", "resume=auto")


def make_text(folder, text):
    path = folder / "corpus.txt"
    path.write_text(text)
    return path


# A sample of the table through train.py itself: one line on stderr, exit code 2, no traceback.
THROUGH_TRAIN = [BAD_CONFIG[i] for i in (0, 6, 9, 10, 12, 13, 15, 18)]


@pytest.mark.parametrize("args, message", THROUGH_TRAIN, ids=[" ".join(a) for a, _ in THROUGH_TRAIN])
def test_train_script_gives_one_line(args, message, tmp_path):
    assert_one_line(run_script("train.py", *args, cwd=tmp_path), message)


def test_paths_that_cannot_be_folders(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for key in ("out_dir", "data.root"):
        assert_one_line(run_script("train.py", f"{key}={blocker}", cwd=tmp_path), f"{key} {blocker} is a file")
    r = run_script("train.py", f"out_dir={blocker}/run", cwd=tmp_path)
    assert_one_line(r, f"out_dir {blocker}/run is under {blocker}, which is a file")


def test_non_utf8_preset_names_the_file(tmp_path):
    preset = tmp_path / "latin1.yaml"
    preset.write_bytes("train:\n  max_steps: 10  # r\xe9sum\xe9\n".encode("latin-1"))
    assert_one_line(run_script("train.py", str(preset), cwd=tmp_path), f"config preset {preset} is not UTF-8")


def test_sample_script_gives_one_line(char_export):
    r = run_script("sample.py", "--out_dir", str(char_export), "--temperature", "nan")
    assert_one_line(r, "'--temperature' must be finite")
    r = run_script("sample.py", "--out_dir", str(char_export), "--num_samples", "1000000000")
    assert_one_line(r, "1,000,000,000 samples of up to", "GiB free on", "lower num_samples")


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, data_root):
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", "model.n_embd=1000000", "model.n_head=1"]
    r = run_script("train.py", *args, f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line(r, "the model has 24,000,", "GiB free on this machine; make it smaller (model.n_layer")
