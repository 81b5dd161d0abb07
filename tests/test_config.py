import re
from pathlib import Path

import pytest

from gpt.config import (
    Config,
    SampleConfig,
    help_text,
    load_config,
    markdown_table,
    parse_flags,
    reference_rows,
    resume_changes,
    to_dict,
)
from gpt.errors import UserError

from conftest import ROOT


def test_defaults_without_arguments():
    assert load_config([]) == Config()


def test_overrides_are_typed():
    cfg = load_config(
        [
            "model.n_layer=6",
            "train.learning_rate=3e-4",
            "model.bias=false",
            "out_dir=out/x",
            "wandb.tags=a,b",
            "train.mixed_precision=BF16",
        ]
    )
    assert load_config(["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert cfg.model.n_layer == 6 and cfg.train.learning_rate == 3e-4 and cfg.model.bias is False
    assert cfg.out_dir == "out/x" and cfg.wandb.tags == ["a", "b"] and cfg.train.mixed_precision == "bf16"


def test_words_yaml_reads_as_booleans_stay_words_on_the_command_line():
    cfg = load_config(["train.mixed_precision=no", "out_dir=on", "model.bias=off", "train.compile=yes"])
    assert cfg.train.mixed_precision == "no" and cfg.out_dir == "on"
    assert cfg.model.bias is False and cfg.train.compile is True


def test_preset_then_overrides(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model:\n  n_layer: 3\n  n_embd: 96\ntrain:\n  max_steps: 7\n")
    cfg = load_config([str(preset), "model.n_layer=5", "model.n_head=3"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.train.max_steps) == (5, 96, 7)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_preset_loads(name):
    load_config([name])


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.n_layers=4"], "unknown config key 'model.n_layers': did you mean 'model.n_layer'"),
        (["model.n_layer=four"], "'model.n_layer' expects an integer, got 'four'"),
        (["model.bias=maybe"], "'model.bias' expects true or false"),
        (["train.mixed_precision=fp8"], "one of 'no', 'bf16', 'fp16'"),
        (["model.n_embd=100", "model.n_head=3"], "must be divisible by model.n_head"),
        (["train.batch_size=30", "train.micro_batch_size=8"], "must be a multiple of train.micro_batch_size"),
        (["model.dropout=1.5"], "'model.dropout' must be in [0, 1)"),
        (["model=3"], "is a section"),
        (["no_such_preset"], "no config preset 'no_such_preset'"),
        (["model.n_layer=2", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_config_gives_one_clear_error(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(args)


def test_preset_with_unknown_key(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  max_step: 7\n")
    with pytest.raises(UserError, match="did you mean 'train.max_steps'"):
        load_config([str(preset)])


def test_help_lists_every_key_with_its_doc():
    text = help_text("train.py")
    for key, _, _default, doc in reference_rows():
        assert f"{key} (" in text and doc in text


def test_config_reference_table_is_up_to_date():
    page = (ROOT / "docs" / "config.md").read_text()
    assert markdown_table() in page, "regenerate docs/config.md's table with: python -m gpt.config --markdown"


def test_cpu_threads_share_the_cores_over_the_processes_of_a_machine():
    import os

    from gpt.cpu import cpu_threads

    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(3, local_processes=4) == 3  # as requested
    assert 1 <= cpu_threads(0, local_processes=1) <= cores
    assert cpu_threads(0, local_processes=1) >= cpu_threads(0, local_processes=2) >= 1
    assert cpu_threads(0, local_processes=10 * cores) == 1


def test_config_command_shows_the_values_of_the_preset_it_is_given(capsys):
    from gpt.config import main

    assert main(["shakespeare_char", "train.max_steps=7"]) == 0
    shown = capsys.readouterr().out
    preset = load_config(["shakespeare_char"])
    assert (
        f"model.n_layer (int, > 0, value {preset.model.n_layer})" in shown
        and preset.model.n_layer != Config().model.n_layer
    )
    assert "train.max_steps (int, > 0, value 7)" in shown


def test_presets_named_in_train_help_exist():
    import subprocess
    import sys

    from gpt.config import preset_names

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=root, capture_output=True, text=True, timeout=60)
    named = set(re.findall(r"train\.py ([A-Za-z]\w*)(?=\s)", r.stdout))  # train.py PRESET, not key=value
    assert named and named <= set(preset_names()), named - set(preset_names())
    assert ", ".join(preset_names()) in r.stdout


def test_every_model_field_says_whether_it_is_architecture():
    """A new ModelConfig field must be classified, or a resume could continue into a model that computes
    something else; the resume check and the GPT-2 export check both derive from the marks."""
    import dataclasses

    from gpt.config import ModelConfig, architecture_fields, gpt2_values

    unmarked = [f.name for f in dataclasses.fields(ModelConfig) if "architecture" not in f.metadata]
    assert unmarked == [], f"mark these ModelConfig fields with architecture=True/False: {unmarked}"
    assert {"n_layer", "n_embd", "position", "norm", "tie_head"} <= set(architecture_fields())
    assert not {"dropout", "attention", "loss_chunk", "init_from"} & set(architecture_fields())
    assert set(gpt2_values()) <= set(architecture_fields())
    assert all(getattr(ModelConfig(), k) == v for k, v in gpt2_values().items())  # the defaults are GPT-2's


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.n_embd=36", "model.n_head=4", "model.position=rope"], "needs an even head size"),
        (["model.pad_vocab_to=0"], "'model.pad_vocab_to' must be >= 1"),
        (["train.time_budget_s=-1"], "'train.time_budget_s' must be >= 0"),
        (["train.muon_momentum=1.5"], r"'train.muon_momentum' must be in \[0, 1\)"),
    ],
)
def test_bad_feature_settings_are_refused(args, message):
    with pytest.raises(UserError, match=message):
        load_config(args)


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


def test_resume_names_the_settings_that_changed():
    saved = to_dict(load_config(["seed=1", "train.learning_rate=3e-3"]))
    now = load_config(["seed=2", "train.learning_rate=1e-3", "out_dir=elsewhere"])
    assert (
        resume_changes(saved, now) == "resuming with changed settings: seed 1 -> 2, train.learning_rate 0.003 -> 0.001"
    )
    assert resume_changes(to_dict(now), now) is None
    del saved["train"]["batch_size"]  # a key older checkpoints lack is not a change
    assert "batch_size" not in resume_changes(saved, now)


def test_sample_flags_follow_the_declared_rules():
    for flags, message in [
        (["--temperature", "nan"], "'--temperature' must be finite and >= 0"),
        (["--seed", "99999999999999999999999"], "'--seed' must be in [0, 4294967296)"),
        (["--seed", "-1"], "'--seed' must be in [0, 4294967296)"),
        (["--top_p", "nan"], "'--top_p' must be finite and in (0, 1]"),
        (["--num_samples", "0"], "'--num_samples' must be > 0"),
        (["--max_new_tokens", "-1"], "'--max_new_tokens' must be >= 0"),
        (["--out_dir", ""], "'--out_dir' must be non-empty"),
        (["--no_such_flag", "1"], "unknown option '--no_such_flag': see sample.py --help"),
        (["--temprature", "0"], "unknown option '--temprature': did you mean '--temperature'?"),
        (["temperature=0"], "options are written --temperature VALUE"),
    ]:
        with pytest.raises(UserError) as e:
            parse_flags(SampleConfig, flags, "sample.py", "")
        assert message in str(e.value)


def test_an_unknown_key_is_matched_within_its_section_first():
    """'train.bogus' is nearest to a train.* key, not to a key of another section that happens to score higher."""
    for wrong, meant in [("train.bogus", "train.beta2"), ("trian.max_steps", "train.max_steps")]:
        with pytest.raises(UserError, match=f"did you mean '{meant}'"):
            load_config([f"{wrong}=1"])
