"""Every entry point opens with a docstring that shows how to run it, and answers --help with it."""

import ast
import re
import subprocess
import sys

import pytest

from conftest import ROOT, env

ENTRY_POINTS = {  # how it is run -> its source file
    ("train.py",): "train.py",
    ("sample.py",): "sample.py",
    ("-m", "gpt.prepare"): "gpt/prepare/cli.py",
    ("-m", "gpt.plot"): "gpt/plot.py",
    ("-m", "gpt.hf"): "gpt/hf.py",
    ("-m", "gpt.config"): "gpt/config/__init__.py",
    ("-m", "gpt.serve"): "gpt/serve.py",
    ("-m", "gpt.plan"): "gpt/plan/__init__.py",
    ("-m", "gpt.evaluate"): "gpt/evaluate.py",
    ("-m", "gpt.bench"): "gpt/bench.py",
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


HELP_COMMANDS = list(ENTRY_POINTS)


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


# Every entry point reads its arguments the same way (gpt.config.flags, or accelerate's parser for gpt.launch):
# a bad option is one line on stderr, `error: ...` naming it and how to get help, and exit status 2.
ARGUMENTS_BESIDES = {  # what each needs besides, so that the unknown option is the only problem
    ("-m", "gpt.hf"): ["src", "out"], ("-m", "gpt.plot"): ["run"], ("-m", "gpt.launch"): ["train.py"],
    ("-m", "gpt.prepare"): ["--out", "out"],
}  # fmt: skip
ALL_COMMANDS = [*ENTRY_POINTS, ("-m", "gpt.launch")]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[" ".join(c) for c in ALL_COMMANDS])
def test_an_unknown_option_is_one_line_and_exit_2(command, tmp_path):
    program = [str(ROOT / command[0])] if command[0].endswith(".py") else list(command)
    args = [*program, "--no_such_option", *ARGUMENTS_BESIDES.get(command, [])]
    r = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--no_such_option" in line and line.endswith("--help"), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "loss.png").exists()  # nothing was done


def test_options_are_checked_by_their_declared_rules_and_suggested_when_misspelt():
    from gpt.config import SampleConfig, parse_command, parse_flags
    from gpt.errors import UserError
    from gpt.plan.report import PlanOptions

    with pytest.raises(UserError, match=r"unknown option '--nodez': did you mean '--nodes'\?"):
        parse_command(PlanOptions, ["shakespeare_char", "--nodez", "2"], "python -m gpt.plan", "")
    with pytest.raises(UserError, match=r"flag '--mfu' must be in \(0, 1\], got 1.5"):
        parse_command(PlanOptions, ["--mfu", "1.5"], "python -m gpt.plan", "")
    with pytest.raises(UserError, match="flag '--gpu' expects one of 'a100-40gb'"):
        parse_command(PlanOptions, ["--gpu", "v100"], "python -m gpt.plan", "")
    # key=value always names a training config key; a command's own option is written --name VALUE
    with pytest.raises(UserError, match="unexpected argument 'top_k=5': options are written --top_k VALUE"):
        parse_flags(SampleConfig, ["top_k=5"], "sample.py", "")


def test_options_and_config_arguments_may_interleave():
    from gpt.bench import BenchOptions
    from gpt.config import parse_command

    argv = ["shakespeare_char", "--steps", "3", "model.n_layer=2", "--bare", "--model.n_embd=64"]
    options, config_args = parse_command(BenchOptions, argv, "python -m gpt.bench", "")
    assert (options.steps, options.bare, options.compare) == (3, True, False)
    assert config_args == ["shakespeare_char", "model.n_layer=2", "--model.n_embd=64"]  # in order, for load_config
    options, _ = parse_command(BenchOptions, ["--compare", "--no-compare"], "python -m gpt.bench", "")
    assert options.compare is False


def test_presets_named_in_docstrings_exist():
    from gpt.config import preset_names

    for path in [ROOT / "train.py", ROOT / "sample.py", *sorted(ROOT.glob("gpt/**/*.py"))]:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        named = re.findall(r"(?:train\.py|-m gpt\.(?:plan|bench|config)) ([A-Za-z]\w*)(?=\s|$)", doc)
        assert set(named) <= set(preset_names()), f"{path.name}: no preset {set(named) - set(preset_names())}"
