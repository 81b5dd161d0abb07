"""Shared fixtures: a tiny prepared corpus and helpers to run the entry scripts as a user would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt.config import ModelConfig
from gpt.model import build_model
from gpt.prepare import prepare_text
from gpt.tokenizer import ASSETS, CharTokenizer

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "tests" / "helpers"  # scripts the tests run in their own processes
CPU_CONFIG = str(ROOT / "launch" / "cpu_multiprocess.yaml")  # accelerate launch config: processes on a CPU

# A model and schedule small enough for a few seconds on two CPU cores.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.batch_size=8", "train.micro_batch_size=8", "train.max_steps=20", "train.warmup_steps=5",
    "train.log_interval=5", "train.eval_interval=10", "train.eval_windows=16", "train.checkpoint_interval=10",
    # one thread per process: runs split over different numbers of processes then sum in the same order,
    # and concurrent test processes do not oversubscribe the cores
    "train.cpu_threads=1",
]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ as e2e, so that ``-m "not e2e"`` runs the unit tests alone."""
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if e2e in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    return (ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, shakespeare) -> Path:
    """data_root/tiny: the first 40,000 characters of Tiny Shakespeare, character-level."""
    root = tmp_path_factory.mktemp("data")
    prepare_text(shakespeare[:40_000], root / "tiny", "char")
    return root


def tiny(**kw) -> ModelConfig:
    """A model of 2 layers, 32 wide, 16 tokens of context and a 65-character vocabulary; ``kw`` overrides."""
    return ModelConfig(**(dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0) | kw))


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial weights everywhere (zero-initialised projections would hide bugs)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


# A bigram model over the characters ' ', 'a', 'b' whose next-character probabilities are set by hand.
NEXT = {" ": [0.1, 0.6, 0.3], "a": [0.5, 0.2, 0.3], "b": [0.2, 0.2, 0.6]}  # P(' '), P('a'), P('b') after each


def hand_set_bigram() -> tuple[torch.nn.Module, CharTokenizer]:
    """The bigram model of NEXT (scores of HellaSwag items and of continuations computed by hand)."""
    tokenizer = CharTokenizer(" ab")
    model = build_model(ModelConfig(kind="bigram", vocab_size=3, block_size=8))
    with torch.no_grad():
        for ch, probs in NEXT.items():
            model.table.weight[tokenizer.stoi[ch]] = torch.tensor(probs).log()  # softmax(log p) = p
    return model.eval(), tokenizer


def fake_export(folder, tokenizer):
    """A real export of an untrained model, written the way the trainer writes it."""
    from gpt.checkpoint import save_weights, write_export

    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=tokenizer.vocab_size)
    weights = folder / "w.safetensors"
    save_weights(build_model(cfg).state_dict(), weights)
    write_export(folder / "model", weights, cfg, tokenizer, {"step": 0})
    return folder / "model"


@pytest.fixture(scope="module")
def char_export(tmp_path_factory, data_root):
    """An untrained export with the tokenizer of data_root/tiny."""
    from gpt.tokenizer import load_tokenizer

    return fake_export(tmp_path_factory.mktemp("export"), load_tokenizer(data_root / "tiny" / "tokenizer.json"))


def assert_one_line(r, *fragments):
    """``r`` (a finished entry point) failed with exit code 2 and one line on stderr holding each fragment."""
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def random_export(folder: Path, tokenizer, block_size: int, sharp: bool = False) -> Path:
    """A small randomly initialised GPT (2 layers, 32 wide) written to ``folder`` as the package exports
    models; ``sharp``: matrices large enough that its choices depend on the context."""
    import torch

    from gpt.checkpoint import save_weights, write_export
    from gpt.model import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=tokenizer.vocab_size)
    model = GPT(cfg)
    if sharp:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.3)
    folder.mkdir(parents=True)
    weights = folder.parent / f"{folder.name}.safetensors"
    save_weights(model.state_dict(), weights)
    write_export(folder, weights, cfg, tokenizer, {"step": 0})
    return folder


def metrics(out: Path) -> list[dict]:
    """The records of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def output(r) -> str:
    """The ends of a finished process's stdout and stderr, for an assertion message."""
    return r.stdout[-4000:] + r.stderr[-4000:]


def free_port() -> int:
    """A TCP port nobody listens on now, so that concurrent test runs don't collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    e.pop("WANDB_API_KEY", None)
    e.update(extra)
    return e


def run_script(script: str, *args: str, cwd: Path | None = None, timeout: float = 300, **extra_env: str):
    """Run train.py / sample.py with this interpreter; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env(**extra_env), capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def run_module(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -m module args`` with this interpreter; returns the CompletedProcess."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=300)


def accelerate_launch(*args: str, cwd: Path | None = None, timeout: float = 300, **extra_env: str):
    """``accelerate launch`` with the given launcher arguments (e.g. --config_file launch/cpu_multiprocess.yaml)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)


def uncached_greedy(model: torch.nn.Module, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding written the plainest way: the whole (cropped) context through the model at every
    step, no cache; what cached decoding must reproduce token for token. Returns the (B, n) new tokens."""
    block = model.cfg.block_size
    out = idx
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(out[:, -block:])
            out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[:, idx.size(1) :]
