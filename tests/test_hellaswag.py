"""HellaSwag scoring (gpt.hellaswag over gpt.scoring): rendering as lm-evaluation-harness renders it,
scores of a hand-set model computed by hand, 1 process = 2 processes, the training loop, bad files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt.errors import UserError
from gpt.export import load_exported
from gpt.hellaswag import Item, evaluate_hellaswag, load_items, parse_eval_tasks, read_jsonl
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

from conftest import ROOT, TINY, accelerate_launch, env, free_port, hand_set_bigram, random_export, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "hellaswag_small.jsonl"


def test_rendering_matches_lm_evaluation_harness():
    datasets = pytest.importorskip("datasets")
    from lm_eval.tasks.hellaswag.utils import process_docs

    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    theirs = process_docs(datasets.Dataset.from_list(rows))
    ours = read_jsonl(FIXTURE)
    assert len(ours) == len(theirs) == 8
    for item, doc in zip(ours, theirs, strict=True):
        assert item.context == doc["query"]
        assert item.endings == doc["choices"]
        assert item.label == doc["gold"]
    assert "[" not in ours[3].context and ". Check the soil first." in ours[3].context  # WikiHow markup cleaned


def test_unknown_characters_of_a_character_model_are_left_out_and_counted():
    model, tokenizer = hand_set_bigram()
    items = [Item("a", ["b", "ab", "bb", "a b"], 0), Item("a?", ["b!", "ab", "bb", "a b"], 0)]
    result = evaluate_hellaswag(model, tokenizer, items, block_size=8, vocab_size=3, batch_size=4)
    assert result.items_with_unknown_chars == 1
    assert result.acc == 1.0  # '?' and '!' left out, the second item is the first one again


def evaluate_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gpt.evaluate", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)


def test_both_tokenizers_score_the_fixture(tmp_path):
    for tokenizer in (CharTokenizer("".join(chr(c) for c in range(32, 127))), GPT2Tokenizer()):
        model, _, _ = load_exported(random_export(tmp_path / tokenizer.identity, tokenizer, 64))
        result = evaluate_hellaswag(model, tokenizer, read_jsonl(FIXTURE), 64, tokenizer.vocab_size, batch_size=3)
        assert result.items == 8 and 0.0 <= result.acc <= 1.0 and 0.0 <= result.acc_norm <= 1.0
        assert result.items_with_unknown_chars == 0


@pytest.mark.slow
def test_two_processes_give_the_one_process_result(tmp_path):
    export = random_export(tmp_path / "model", GPT2Tokenizer(), 64)
    args = ["-m", "gpt.evaluate", "--out_dir", str(export), "--task", "hellaswag", "--data", str(FIXTURE)]
    one = evaluate_command(*args[2:], "--batch_size", "3", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    two = accelerate_launch(
        "--config_file", str(ROOT / "launch" / "cpu_multiprocess.yaml"), "--num_processes", "2",
        "--main_process_port", str(free_port()), *args, "--batch_size", "3", cwd=tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (one, two))
    assert (second["processes"], first["processes"]) == (2, 1)
    assert (second["acc"], second["acc_norm"], second["items"]) == (first["acc"], first["acc_norm"], 8)
    assert "acc_norm" in one.stdout and (export / "hellaswag.json").is_file()


def test_in_the_training_loop(tmp_path, data_root):
    out = tmp_path / "run"
    r = run_script(
        "train.py", *TINY, "train.max_steps=10", f"data.root={data_root}", "data.dataset=tiny", f"out_dir={out}",
        f"train.eval_tasks=hellaswag={FIXTURE}", "train.eval_task_limit=5", "train.final_eval=false",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = [rec for rec in records if "eval/hellaswag/acc_norm" in rec]
    assert [rec["step"] for rec in scored] == [10]
    assert 0.0 <= scored[0]["eval/hellaswag/acc"] <= 1.0 and scored[0]["eval/hellaswag/acc"] * 5 % 1 == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json\n", "line 1 is not valid JSON"),
        ('{"ctx": "a", "label": 0}\n', "no field 'endings'"),
        ('{"endings": ["a", "b", "c", "d"], "label": 0}\n', "no field 'ctx'"),
        ('{"ctx": "a", "endings": ["a", "b"], "label": 0}\n', "list of 4 endings"),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": 7}\n', "label 7"),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": "x"}\n', "'label' must be an integer"),
        ("", "holds no HellaSwag items"),
        ("[1, 2]\n", "is not a JSON object"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_jsonl(path)


def test_bad_input_through_the_command(tmp_path):
    export = random_export(tmp_path / "model", GPT2Tokenizer(), 64)
    for args, message in [
        (["--data", str(tmp_path / "missing.jsonl")], "does not exist"),
        (["--task", "winogrande"], "unknown --task 'winogrande'"),
    ]:
        r = evaluate_command("--out_dir", str(export), "--task", "hellaswag", *args, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_unknown_task_in_the_config_and_an_offline_hub_are_one_line(monkeypatch):
    with pytest.raises(UserError, match="unknown evaluation task 'mmlu'"):
        parse_eval_tasks(["mmlu"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load Rowan/hellaswag"):
        load_items("", limit=5)
