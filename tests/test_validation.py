"""A table of hostile inputs: each gets one clear line naming what was wrong, and exit code 2.

Most rows go through the config validation in this process (fast); a sample of them, and every input
that only an entry point sees (files, flags, token data), go through train.py, sample.py,
python -m gpt.prepare and python -m gpt.evaluate as a user runs them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt.config import SampleConfig, load_config, parse_flags, resume_changes, to_dict
from gpt.data import HEADER_SIZE, TokenFile, TokenStream, write_token_file
from gpt.errors import UserError

from conftest import ROOT, TINY, env, fake_export, free_port, run_script

# (arguments of train.py, what the one line must name)
BAD_CONFIG = [
    (["train.learning_rate=nan"], "'train.learning_rate' must be finite and > 0"),
    (["train.learning_rate=0"], "'train.learning_rate' must be > 0"),
    (["train.learning_rate=inf"], "'train.learning_rate' must be finite"),
    (["train.min_lr=nan"], "'train.min_lr' must be finite"),
    (["train.min_lr=-1e-4"], "'train.min_lr' must be >= 0"),
    (["train.min_lr=1", "train.learning_rate=0.1"], "train.min_lr (1.0) must not exceed train.learning_rate"),
    (["train.beta1=1.5"], "'train.beta1' must be in [0, 1)"),
    (["train.beta2=-0.1"], "'train.beta2' must be in [0, 1)"),
    (["train.beta2=1"], "'train.beta2' must be in [0, 1)"),
    (["seed=-1"], "'seed' must be in [0, 4294967296)"),
    (["seed=4294967296"], "'seed' must be in [0, 4294967296)"),
    (["seed=1e3"], "'seed' expects an integer"),
    (["train.weight_decay=-0.1"], "'train.weight_decay' must be >= 0"),
    (["train.grad_clip=-1"], "'train.grad_clip' must be >= 0"),
    (["train.grad_clip=nan"], "'train.grad_clip' must be finite"),
    (["out_dir="], "'out_dir' must be non-empty"),
    (["out_dir=  "], "'out_dir' must be non-empty"),
    (["data.dataset="], "'data.dataset' must be non-empty"),
    (["train.time_budget_s=nan"], "'train.time_budget_s' must be finite"),
    (["train.time_budget_s=-5"], "'train.time_budget_s' must be >= 0"),
    (["train.peak_tflops=-1"], "'train.peak_tflops' must be >= 0"),
    (["train.warmup_steps=-1"], "'train.warmup_steps' must be >= 0"),
    (["train.max_steps=0"], "'train.max_steps' must be > 0"),
    (["train.batch_size=-8"], "'train.batch_size' must be > 0"),
    (["train.micro_batch_size=0"], "'train.micro_batch_size' must be positive"),
    (["train.keep_last=0"], "'train.keep_last' must be > 0"),
    (["train.eval_samples=-1"], "'train.eval_samples' must be >= 0"),
    (["train.cpu_threads=-2"], "'train.cpu_threads' must be >= 0"),
    (["train.muon_lr=0"], "'train.muon_lr' must be > 0"),
    (["train.muon_momentum=1"], "'train.muon_momentum' must be in [0, 1)"),
    (["model.dropout=nan"], "'model.dropout' must be finite"),
    (["model.rope_base=1"], "'model.rope_base' must be > 1"),
    (["model.vocab_size=-1"], "'model.vocab_size' must be >= 0"),
    (["model.pad_vocab_to=0"], "'model.pad_vocab_to' must be >= 1"),
    (["model.n_layer=0"], "'model.n_layer' must be > 0"),
    (["wandb.init_timeout_s=0"], "'wandb.init_timeout_s' must be > 0"),
    (["train.max_steps=[1"], "'train.max_steps' expects an integer"),  # not YAML: the text itself
]


@pytest.mark.parametrize("args, message", BAD_CONFIG, ids=[" ".join(a) for a, _ in BAD_CONFIG])
def test_bad_config_value_is_refused_naming_its_key(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_config(args)
    assert message in str(e.value) and "\n" not in str(e.value)


# A sample of the table through train.py itself: one line on stderr, exit code 2, no traceback.
THROUGH_TRAIN = [BAD_CONFIG[i] for i in (0, 6, 9, 10, 12, 13, 15, 18)]


def assert_one_line(r, *fragments):
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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


def test_read_only_places_are_named(tmp_path, monkeypatch):
    """Root may write anywhere, so a read-only folder is simulated: os.access says no."""
    from gpt import paths

    monkeypatch.setattr(paths.os, "access", lambda *a: False)
    with pytest.raises(UserError, match=f"out_dir {tmp_path / 'run'} would be created in {tmp_path}, which is read"):
        load_config([f"out_dir={tmp_path / 'run'}"])
    assert paths.folder_problem(tmp_path, writable=False) is None  # prepared data may be read-only


def test_non_utf8_preset_names_the_file(tmp_path):
    preset = tmp_path / "latin1.yaml"
    preset.write_bytes("train:\n  max_steps: 10  # r\xe9sum\xe9\n".encode("latin-1"))
    assert_one_line(run_script("train.py", str(preset), cwd=tmp_path), f"config preset {preset} is not UTF-8")


def test_resume_names_the_settings_that_changed():
    saved = to_dict(load_config(["seed=1", "train.learning_rate=3e-3"]))
    now = load_config(["seed=2", "train.learning_rate=1e-3", "out_dir=elsewhere"])
    assert (
        resume_changes(saved, now) == "resuming with changed settings: seed 1 -> 2, train.learning_rate 0.003 -> 0.001"
    )
    assert resume_changes(to_dict(now), now) is None
    del saved["train"]["batch_size"]  # a key older checkpoints lack is not a change
    assert "batch_size" not in resume_changes(saved, now)


# ------------------------------------------------------------------------------------------------
# sample.py and gpt.evaluate


def test_sample_flags_follow_the_declared_rules():
    for flags, message in [
        (["--temperature", "nan"], "'--temperature' must be finite and >= 0"),
        (["--seed", "99999999999999999999999"], "'--seed' must be in [0, 4294967296)"),
        (["--seed", "-1"], "'--seed' must be in [0, 4294967296)"),
        (["--top_p", "nan"], "'--top_p' must be finite and in (0, 1]"),
        (["--num_samples", "0"], "'--num_samples' must be > 0"),
        (["--max_new_tokens", "-1"], "'--max_new_tokens' must be >= 0"),
        (["--out_dir", ""], "'--out_dir' must be non-empty"),
        (["--no_such_flag", "1"], "unrecognized arguments: --no_such_flag 1; see sample.py --help"),
    ]:
        with pytest.raises(UserError) as e:
            parse_flags(SampleConfig, flags, "sample.py", "")
        assert message in str(e.value)


@pytest.fixture(scope="module")
def char_export(tmp_path_factory, data_root):
    from gpt.tokenizer import load_tokenizer

    return fake_export(tmp_path_factory.mktemp("export"), load_tokenizer(data_root / "tiny" / "tokenizer.json"))


def test_sample_script_gives_one_line(char_export):
    r = run_script("sample.py", "--out_dir", str(char_export), "--temperature", "nan")
    assert_one_line(r, "'--temperature' must be finite")
    r = run_script("sample.py", "--out_dir", str(char_export), "--num_samples", "1000000000")
    assert_one_line(r, "1,000,000,000 samples of up to", "GiB free on", "lower num_samples")


def run_module(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=300)


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


# ------------------------------------------------------------------------------------------------
# Token ids beyond the vocabulary


def test_prepare_records_the_largest_id(tmp_path):
    path = write_token_file(tmp_path / "t.tok", [3, 9, 4], vocab_size=10, identity="x")
    assert int.from_bytes(path.read_bytes()[HEADER_SIZE - 4 : HEADER_SIZE], "little") == 9 + 1


def corrupt(path, position: int, token_id: int, record_max: bool = True) -> None:
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 2 * position : HEADER_SIZE + 2 * position + 2] = token_id.to_bytes(2, "little")
    if not record_max:
        data[HEADER_SIZE - 4 : HEADER_SIZE] = bytes(4)  # as files written before the largest id was recorded
    path.write_bytes(bytes(data))


def test_ids_beyond_the_vocabulary_are_found_at_open_and_in_every_window(tmp_path):
    tokens = np.arange(200_000) % 65
    good = write_token_file(tmp_path / "good.tok", tokens, 65, "x")
    assert len(TokenFile(good)) == 200_000
    old = write_token_file(tmp_path / "old.tok", tokens, 65, "x")
    corrupt(old, 0, 0, record_max=False)
    assert len(TokenFile(old)) == 200_000  # files without a recorded largest id still open

    lying = write_token_file(tmp_path / "lying.tok", tokens, 65, "x")
    corrupt(lying, 3, 300, record_max=False)  # inside the sample read at open
    with pytest.raises(UserError, match=f"{lying} holds token id 300 \\(at token 3\\), beyond its vocabulary of 65"):
        TokenFile(lying)
    recorded = tmp_path / "recorded.tok"
    recorded.write_bytes(
        good.read_bytes()[: HEADER_SIZE - 4] + (1000).to_bytes(4, "little") + tokens.astype("<u2").tobytes()
    )
    with pytest.raises(UserError, match=f"{recorded} holds token id 999, beyond its vocabulary"):
        TokenFile(recorded)

    hidden = write_token_file(tmp_path / "hidden.tok", tokens, 65, "x")
    corrupt(hidden, 105_000, 300)  # between the pieces sampled at open
    stream = TokenStream([good, hidden])
    with pytest.raises(UserError, match=f"{hidden} holds token id 300 \\(at token 105,000\\)"):
        stream.windows(np.array([0, 200_000 + 104_990]), 20)
    with pytest.raises(UserError, match=f"{hidden} holds token id 300"):
        stream.window(200_000 + 104_999, 5)


def test_train_names_the_token_file_with_a_bad_id(tmp_path, data_root):
    import shutil

    shutil.copytree(data_root / "tiny", tmp_path / "bad")
    val = tmp_path / "bad" / "val-000000.tok"
    corrupt(val, 10, 999)
    r = run_script("train.py", *TINY, f"data.root={tmp_path}", "data.dataset=bad", cwd=tmp_path)
    assert_one_line(r, f"{val} holds token id 999 (at token 10), beyond its vocabulary")


def test_a_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path, data_root):
    args = [*TINY, f"data.root={data_root}", "data.dataset=tiny", "model.n_embd=1000000", "model.n_head=1"]
    r = run_script("train.py", *args, f"out_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line(r, "the model has 24,000,", "GiB free on this machine; make it smaller (model.n_layer")


# ------------------------------------------------------------------------------------------------
# gpt.prepare


def test_prepare_gives_one_line(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello there\n" * 50)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    r = run_module("gpt.prepare", "--input", "corpus.txt", "--out", str(blocker), cwd=tmp_path)
    assert_one_line(r, f"--out {blocker} is a file")
    r = run_module("gpt.prepare", "--input", "corpus.txt", "--out", "x", "--num_proc", "lots", cwd=tmp_path)
    assert_one_line(r, "argument --num_proc: invalid int value: 'lots'")


WORKERS_THEN_WAIT = """
import os, sys, time
from gpt.prepare import Encoders, Task
from gpt.tokenizer import CharTokenizer
encoders = Encoders(CharTokenizer("ab"), num_proc=2)
list(encoders.submit(Task(["ab"], [True], 0, "train")))  # the pool starts its workers
list(encoders.drain())
import psutil
print(" ".join(str(c.pid) for c in psutil.Process().children()), flush=True)
time.sleep(600)
"""


def test_tokenizer_workers_exit_when_prepare_is_killed():
    import psutil

    parent = subprocess.Popen([sys.executable, "-c", WORKERS_THEN_WAIT], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        workers = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2
        parent.kill()  # SIGKILL: no chance to shut the pool down
        parent.wait()
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their parent"
    finally:
        parent.kill()


PEAK_MEMORY = """
import resource, sys
from gpt.prepare import main

def prepare(text_file, out, sample_by):
    assert main(["--input", text_file, "--out", out, "--sample_by", sample_by, "--num_proc", "1"]) == 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak so far

small, huge, out = sys.argv[1:]
baseline = prepare(small, out + "small", "line")  # the same code, its imports included, on little text
print(" ".join(str(prepare(huge, out + sample_by, sample_by) - baseline) for sample_by in ("line", "document")))
"""


@pytest.mark.slow
def test_a_huge_single_line_is_prepared_in_bounded_memory(tmp_path):
    """16 MiB without a newline, as lines and as a document: read and tokenized in pieces, the peak
    memory grows by less than twice its size (it grew by 36 times its size before)."""
    size = 16 << 20
    words = np.array([b"the ", b"quick ", b"fox ", b"jumps "])[np.random.default_rng(0).integers(0, 4, size // 4)]
    (tmp_path / "line.txt").write_bytes(b"".join(words)[:size])
    (tmp_path / "small.txt").write_bytes(b"the quick fox " * 100)
    cmd = [
        sys.executable,
        "-c",
        PEAK_MEMORY,
        str(tmp_path / "small.txt"),
        str(tmp_path / "line.txt"),
        str(tmp_path / "out-"),
    ]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for sample_by, growth in zip(("line", "document"), map(int, r.stdout.split()[-2:]), strict=True):
        assert growth < 2 * size, f"{sample_by}: peak memory {growth / 2**20:.0f} MiB above a small file's"
    manifest = json.loads((tmp_path / "out-line" / "prepare.json").read_text())
    assert manifest["train"] + manifest["val"] == size and manifest["documents"]["total"] == 1


# ------------------------------------------------------------------------------------------------
# W&B without network


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
