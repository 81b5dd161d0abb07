"""HellaSwag scoring (gpt.hellaswag over gpt.scoring): rendering as lm-evaluation-harness renders it,
scores of a hand-set model computed by hand, 1 process = 2 processes, the training loop, bad files."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.export import load_exported
from gpt.hellaswag import Item, evaluate_hellaswag, load_items, parse_eval_tasks, read_jsonl
from gpt.model import build_model
from gpt.scoring import score_pairs
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

from conftest import ROOT, TINY, accelerate_launch, env, free_port, random_export, run_script

FIXTURE = ROOT / "tests" / "fixtures" / "hellaswag_small.jsonl"

# A bigram model over the characters ' ', 'a', 'b' whose next-character probabilities are set by hand.
NEXT = {" ": [0.1, 0.6, 0.3], "a": [0.5, 0.2, 0.3], "b": [0.2, 0.2, 0.6]}  # P(' '), P('a'), P('b') after each


def hand_set_bigram() -> tuple[torch.nn.Module, CharTokenizer]:
    tokenizer = CharTokenizer(" ab")
    model = build_model(ModelConfig(kind="bigram", vocab_size=3, block_size=8))
    with torch.no_grad():
        for ch, probs in NEXT.items():
            model.table.weight[tokenizer.stoi[ch]] = torch.tensor(probs).log()  # softmax(log p) = p
    return model.eval(), tokenizer


def by_hand(text: str) -> float:
    """log-likelihood of text[1:] after text[0] under NEXT."""
    order = " ab"
    return sum(math.log(NEXT[a][order.index(b)]) for a, b in zip(text, text[1:], strict=False))


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


def test_scores_of_a_hand_set_model_are_computed_by_hand():
    model, tokenizer = hand_set_bigram()
    endings = ["b", "ab", "bb", "a b"]
    # summed: " b" is likeliest (acc picks 0); per character: " a b" (acc_norm picks 3)
    summed = [by_hand("a " + e) for e in endings]
    assert max(range(4), key=summed.__getitem__) == 0
    assert max(range(4), key=lambda i: summed[i] / len(endings[i])) == 3
    pairs = [(tokenizer.encode("a"), tokenizer.encode(" " + e)) for e in [*endings, "a"]]
    scores = score_pairs(model, pairs, block_size=8, vocab_size=3, batch_size=3, device="cpu")
    assert [s.logprob for s in scores] == pytest.approx([*summed, by_hand("a a")], abs=1e-6)
    assert [s.tokens for s in scores] == [2, 3, 3, 4, 2]
    assert [s.greedy for s in scores] == [False] * 4 + [True]  # after 'a' the likeliest is ' ', after ' ' 'a'

    items = [Item("a", endings, 3), Item("a", endings, 0), Item("a", endings, 3)]
    result = evaluate_hellaswag(model, tokenizer, items, block_size=8, vocab_size=3, batch_size=2)
    assert (result.acc, result.acc_norm, result.items) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 3)


def test_a_long_context_keeps_its_last_tokens():
    model, tokenizer = hand_set_bigram()
    long_context = tokenizer.encode("ab" * 20)  # longer than block_size 8: only the last tokens are read
    pair = (long_context, tokenizer.encode(" a"))
    short = (tokenizer.encode("b"), tokenizer.encode(" a"))
    (a,), (b,) = (score_pairs(model, [p], 8, 3, 1, "cpu") for p in (pair, short))
    assert a.logprob == pytest.approx(b.logprob) == pytest.approx(by_hand("b a"))


def test_a_continuation_longer_than_the_context_is_scored_in_pieces():
    model, tokenizer = hand_set_bigram()
    text = "a ab bba b"  # 9 characters to score after 'a', with a context of 2: five windows
    (score,) = score_pairs(model, [(tokenizer.encode("a"), tokenizer.encode(text[1:]))], 2, 3, 4, "cpu")
    assert score.tokens == 9 and score.logprob == pytest.approx(by_hand(text))  # every character, once


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
