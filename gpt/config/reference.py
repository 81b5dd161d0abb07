"""Documentation generated from the dataclasses: ``--help``, the table of docs/config.md, ``python -m gpt.config``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpt.config.fields import describe, doc, is_section, section_fields, type_name
from gpt.config.flags import CONFIG_ARGS, parse_command
from gpt.config.loading import load_config, preset_names
from gpt.config.run import Config


def reference_rows(section: Any = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) for every config key, in declaration order."""
    section = Config() if section is None else section
    rows = []
    for name, (f, tp) in section_fields(section).items():
        value = getattr(section, name)
        if is_section(tp):
            rows += reference_rows(value, f"{prefix}{name}.")
        else:
            shown = ",".join(value) if isinstance(value, list) else value
            check = f.metadata.get("check")
            shown_type = f"{type_name(tp)}, {describe(check)}" if check else type_name(tp)
            rows.append((prefix + name, shown_type, repr(shown), f.metadata["doc"]))
    return rows


def help_text(program: str, cfg: Config | None = None) -> str:
    """Usage, the presets and every key with its meaning: with its default, or its value in ``cfg``."""
    return f"usage: {program} {CONFIG_ARGS}\n\n{keys_text(cfg)}"


def keys_text(cfg: Config | None = None) -> str:
    """The presets and every key with its meaning: with its default, or its value in ``cfg``."""
    lines = [
        f"PRESET is a YAML file or the name of one in configs/: {', '.join(preset_names())}.",
        "Keys and defaults (a preset overrides defaults, command-line overrides win over both):"
        if cfg is None
        else "Keys and their values in this config:",
        "",
    ]
    for key, tp, value, text in reference_rows(cfg):
        lines.append(f"  {key} ({tp}, {'default' if cfg is None else 'value'} {value})")
        lines.append(f"      {text}")
    return "\n".join(lines)


def markdown_table() -> str:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, tp, default, text in reference_rows():
        escaped_type = tp.replace("|", " \\| ")
        rows.append(f"| `{key}` | {escaped_type} | `{default}` | {text} |")
    return "\n".join(rows)


@dataclass
class ReferenceOptions:
    """The options of python -m gpt.config."""

    markdown: bool = doc(False, "Print every key as the table of docs/config.md (markdown) instead.")


def main(argv: list[str]) -> int:
    import gpt.config

    program = "python -m gpt.config"
    options, config_args = parse_command(ReferenceOptions, argv, program, gpt.config.__doc__, epilog=keys_text())
    if options.markdown:
        print(markdown_table())
    elif config_args:
        print(help_text(program, load_config(config_args)))
    else:
        print(gpt.config.__doc__)
        print(help_text(program))
    return 0
