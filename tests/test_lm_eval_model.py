"""lm-evaluation-harness on our checkpoints (gpt.lm_eval_model): three small tasks written here, one of
each request kind, run through lm_eval's own evaluator on one of our models and on the same model
exported to transformers and run by lm_eval's ``hf`` model. Offline: the model is random and small."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import checkpoint as ckpt
from gpt import hf
from gpt.config import ModelConfig
from gpt.model import build_model
from gpt.tokenizer import GPT2Tokenizer

from conftest import env

lm_eval = pytest.importorskip("lm_eval")  # the eval extra; installed by the README's test command
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt.lm_eval_model import GPTLM, cut_at_stop  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green", "loud"], "label": 0, "answer": " blue"},
    {"question": "Two plus two is", "choices": ["four", "five", "a fish"], "label": 0, "answer": " four"},
    {"question": "Water is", "choices": ["dry", "wet", "square"], "label": 1, "answer": " wet"},
    {"question": "A year has twelve", "choices": ["months", "wheels", "corners"], "label": 0, "answer": " months"},
]
TEXTS = [
    {"text": "To be, or not to be, that is the question."},
    {"text": "Now is the winter of our discontent made glorious summer by this sun of York. " * 3},
]


def write_tasks(folder: Path) -> Path:
    """Task YAML files over local jsonl files, the way a user adds their own tasks (--include_path)."""
    folder.mkdir()
    (folder / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    (folder / "texts.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
    common = "dataset_path: json\ntest_split: train\n"
    data = {"qa": folder / "qa.jsonl", "texts": folder / "texts.jsonl"}
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\n{common}dataset_kwargs:\n  data_files: {data['qa']}\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    (folder / "tiny_rolling.yaml").write_text(
        f"task: tiny_rolling\n{common}dataset_kwargs:\n  data_files: {data['texts']}\n"
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files: {data['qa']}\noutput_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 6\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A small random GPT with the GPT-2 vocabulary, as our export and as a transformers export."""
    root = tmp_path_factory.mktemp("lm_eval")
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50257, gelu="tanh")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # larger weights than at initialisation, so the scores are far from uniform
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ours = root / "model"
    ours.mkdir()
    ckpt.save_weights(model.state_dict(), root / "weights.safetensors")
    ckpt.write_export(ours, root / "weights.safetensors", cfg, GPT2Tokenizer(), {"step": 7})
    hf.export(ours, root / "hf")
    return ours, root / "hf"


def evaluate(model, folder: Path) -> dict:
    return lm_eval.simple_evaluate(
        model=model, tasks=["tiny_mc", "tiny_rolling", "tiny_gen"], task_manager=TaskManager(include_path=str(folder)),
        log_samples=True, bootstrap_iters=0,
    )  # fmt: skip


def test_our_model_scores_as_transformers_scores_its_export(exported, tmp_path, monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    ours, theirs = exported
    tasks = write_tasks(tmp_path / "tasks")
    mine = evaluate(GPTLM(str(ours), batch_size=4), tasks)
    reference = evaluate(HFLM(pretrained=str(theirs), device="cpu", batch_size=4, dtype="float32"), tasks)
    for task in ("tiny_mc", "tiny_rolling"):
        a = [s["resps"] for s in mine["samples"][task]]
        b = [s["resps"] for s in reference["samples"][task]]
        flat = [(x, y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
        assert len(flat) == {"tiny_mc": 12, "tiny_rolling": 2}[task]
        for x, y in flat:  # (log-likelihood, is_greedy) for multiple choice, a log-likelihood for rolling
            x, y = (x[0], y[0]) if isinstance(x[0], (list, tuple)) else (x, y)
            assert float(x[0]) == pytest.approx(float(y[0]), abs=1e-4)
        for metric, value in reference["results"][task].items():
            if isinstance(value, float):
                # perplexities are exponentials of the summed log-likelihoods: compared relatively
                assert mine["results"][task][metric] == pytest.approx(value, rel=1e-5, abs=1e-4), metric
    generated = [s["resps"][0][0] for s in mine["samples"]["tiny_gen"]]
    assert generated == [s["resps"][0][0] for s in reference["samples"]["tiny_gen"]]
    assert any(generated)  # greedy text, cut at the stop string


def test_the_command_prints_lm_evals_table_and_saves_json(exported, tmp_path):
    ours, _ = exported
    tasks = write_tasks(tmp_path / "tasks")
    cmd = [sys.executable, "-m", "gpt.evaluate", "--out_dir", str(ours), "--lm_eval", "tiny_mc,tiny_rolling"]
    cmd += ["--include_path", str(tasks), "--limit", "2", "--json", str(tmp_path / "out.json")]
    r = subprocess.run(cmd, env=env(**OFFLINE), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny_mc" in r.stdout and "acc_norm" in r.stdout and "|" in r.stdout  # lm_eval's markdown table
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["step"] == 7 and {"tiny_mc", "tiny_rolling"} <= saved["results"].keys()

    bad = subprocess.run(
        [*cmd[:5], "no_such_task"], env=env(**OFFLINE), capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert bad.returncode == 2 and "no_such_task" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_generation_is_cut_at_the_earliest_stop_string():
    assert cut_at_stop("blue sky.\nnext", [".", "\n"]) == "blue sky"
    assert cut_at_stop("no stop here", ["\n\n"]) == "no stop here"
