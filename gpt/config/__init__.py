"""Typed run configuration: one dataclass per concern, YAML presets, ``key.sub=value`` overrides.

    python -m gpt.config               # every config key with its type, default and meaning
    python -m gpt.config shakespeare_char train.max_steps=100   # the values a preset and overrides give
    python -m gpt.config --markdown    # the table of docs/config.md

Every field carries its documentation in ``metadata["doc"]``; ``train.py --help`` and the config
table in docs/config.md are generated from it.
"""

# The package, by concern: ``fields`` (``doc()``, the rules a value must follow,
# conversion of values), ``model`` (ModelConfig), ``run`` (the rest of a training run's Config), ``tools``
# (the options of sample.py, gpt.serve and gpt.evaluate), ``loading`` (presets and overrides), ``validation``,
# ``flags`` (``--name value`` options generated from a dataclass) and ``reference`` (``--help``, the table
# of docs/config.md).

from gpt.config.fields import (
    NON_EMPTY,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SEED,
    allowed,
    check_fields,
    describe,
    doc,
    flat_dict,
    to_dict,
)
from gpt.config.flags import CONFIG_ARGS, parse_command, parse_flags
from gpt.config.loading import (
    PRESET_DIRS,
    find_preset,
    load_config,
    model_config_from_dict,
    preset_names,
    train_command,
)
from gpt.config.model import AUTO_LOSS_CHUNK, CHUNKED_LOSS_FROM_VOCAB, ModelConfig, architecture_fields, gpt2_values
from gpt.config.reference import help_text, keys_text, main, markdown_table, reference_rows
from gpt.config.run import Config, DataConfig, TrackingConfig, TrainConfig, WandbConfig
from gpt.config.tools import EvalConfig, SampleConfig, ServeConfig
from gpt.config.validation import resume_changes, validate

__all__ = [
    "AUTO_LOSS_CHUNK", "CHUNKED_LOSS_FROM_VOCAB", "CONFIG_ARGS", "NON_EMPTY", "NON_NEGATIVE", "POSITIVE", "PRESET_DIRS",
    "PROBABILITY", "SEED", "Config", "DataConfig", "EvalConfig", "ModelConfig", "SampleConfig", "ServeConfig",
    "TrackingConfig", "TrainConfig", "WandbConfig", "allowed", "architecture_fields", "check_fields", "describe",
    "doc", "find_preset", "flat_dict", "gpt2_values", "help_text", "keys_text", "load_config", "main", "markdown_table",
    "model_config_from_dict", "parse_command", "parse_flags", "preset_names", "reference_rows", "resume_changes",
    "to_dict", "train_command", "validate",
]  # fmt: skip
