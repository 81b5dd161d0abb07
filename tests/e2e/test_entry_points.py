"""Every entry point opens with a docstring that shows how to run it, and answers --help with it."""

import ast
import subprocess
import sys

import pytest

from conftest import ROOT, env

ENTRY_POINTS = {  # how it is run -> its source file
    ("train.py",): "train.py",
    ("sample.py",): "sample.py",
    ("-m", "gpt.prepare"): "gpt/prepare.py",
    ("-m", "gpt.plot"): "gpt/plot.py",
    ("-m", "gpt.hf"): "gpt/hf.py",
    ("-m", "gpt.config"): "gpt/config.py",
    ("-m", "gpt.serve"): "gpt/serve.py",
    ("-m", "gpt.plan"): "gpt/plan.py",
    ("-m", "gpt.evaluate"): "gpt/evaluate.py",
}


@pytest.mark.parametrize("command, source", list(ENTRY_POINTS.items()), ids=list(ENTRY_POINTS.values()))
def test_docstring_shows_how_to_run_it_and_help_prints_it(command, source):
    doc = ast.get_docstring(ast.parse((ROOT / source).read_text()))
    invocation = command[0] if command[0] != "-m" else f"python -m {command[1]}"
    usage_lines = [line.strip() for line in doc.splitlines() if invocation in line]
    assert usage_lines, f"the docstring of {source} shows no `{invocation}` command"
    r = subprocess.run(
        [sys.executable, *command, "--help"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert usage_lines[0] in r.stdout


HELP_COMMANDS = [*ENTRY_POINTS, ("-m", "gpt.bench")]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=[" ".join(c) for c in HELP_COMMANDS])
def test_help_answers_before_torch_loads(command):
    # torch takes seconds to import; --help is asked of a command before anything else
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *command, "--help"], cwd=ROOT, env=env(), capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported
