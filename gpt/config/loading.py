"""Reading a training config: defaults, then a YAML preset, then ``key.sub=value`` overrides."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from gpt.config.fields import convert, is_section, section_fields
from gpt.config.model import ModelConfig
from gpt.config.run import Config
from gpt.config.validation import validate
from gpt.errors import UserError
from gpt.paths import check_folder

PRESET_DIRS = (Path.cwd() / "configs", Path(__file__).resolve().parent.parent.parent / "configs")


def set_key(cfg: Config, dotted: str, value: Any, from_cli: bool) -> None:
    node: Any = cfg
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        fields = section_fields(node)
        prefix = ".".join(parts[:depth])
        if part not in fields:
            known = [f"{prefix}.{n}" if prefix else n for n in fields]
            # a key of the section it names first (train.bogus: a train.* key), then any key (trian.max_steps)
            close = (prefix and difflib.get_close_matches(dotted, known, n=1)) or difflib.get_close_matches(
                dotted, all_keys(), n=1
            )
            hint = f"did you mean '{close[0]}'?" if close else "valid keys here: " + ", ".join(known)
            raise UserError(f"unknown config key '{dotted}': {hint} (see train.py --help)")
        _, tp = fields[part]
        last = depth == len(parts) - 1
        if is_section(tp):
            if last:
                if not isinstance(value, dict):
                    raise UserError(f"config key '{dotted}' is a section; set its keys, e.g. {dotted}.KEY=VALUE")
                for sub_key, sub_value in value.items():
                    set_key(cfg, f"{dotted}.{sub_key}", sub_value, from_cli)
                return
            node = getattr(node, part)
        else:
            if not last:
                raise UserError(f"unknown config key '{dotted}': '{'.'.join(parts[: depth + 1])}' is not a section")
            setattr(node, part, convert(dotted, value, tp, from_cli))


def all_keys(section: Any = None, prefix: str = "") -> list[str]:
    section = Config() if section is None else section
    keys = []
    for name, (_, tp) in section_fields(section).items():
        if is_section(tp):
            keys += all_keys(getattr(section, name), f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def find_preset(name: str) -> Path:
    """A preset by path (``configs/x.yaml``) or by name (``x``), looked up in ``configs/``."""
    candidates = [Path(name)] + [d / f"{name}.yaml" for d in PRESET_DIRS]
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"no config preset '{name}': give a YAML path or one of {', '.join(preset_names())}")


def preset_names() -> list[str]:
    """The presets that ``find_preset`` finds by name."""
    return sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def train_command(out_dir: str | Path) -> str:
    """The train.py command whose run writes to ``out_dir``: the preset whose out_dir it is, else an override."""
    if Path(out_dir) == Path(Config().out_dir):
        return "python train.py"
    for name in preset_names():
        try:
            preset = yaml.safe_load(find_preset(name).read_text())
        except yaml.YAMLError:
            continue
        if isinstance(preset, dict) and Path(str(preset.get("out_dir", ""))) == Path(out_dir):
            return f"python train.py {name}"
    return f"python train.py out_dir={out_dir}"


def load_config(args: list[str]) -> Config:
    """Build a Config from ``[PRESET] [key.sub=value ...]``: defaults, then the preset, then overrides."""
    cfg = Config()
    overrides = []
    for i, arg in enumerate(args):
        if "=" in arg:
            key, value = arg.split("=", 1)
            overrides.append((key.strip().lstrip("-"), value))
        elif i == 0:
            path = find_preset(arg)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as e:
                raise UserError(f"config preset {path} is not valid YAML: {' '.join(str(e).split())}") from None
            except UnicodeDecodeError as e:
                raise UserError(
                    f"config preset {path} is not UTF-8 (byte offset {e.start}); save it as UTF-8"
                ) from None
            except OSError as e:
                raise UserError(f"cannot read config preset {path}: {e.strerror}") from None
            if not isinstance(data, dict):
                raise UserError(f"config preset {path} must be a mapping of keys to values")
            for key, value in data.items():
                set_key(cfg, key, value, from_cli=False)
        else:
            raise UserError(f"unexpected argument '{arg}': overrides look like key.sub=value (see --help)")
    for key, value in overrides:
        set_key(cfg, key, parse_override(value), from_cli=True)
    validate(cfg)
    check_folder(cfg.out_dir, "out_dir")
    check_folder(cfg.data.root, "data.root", writable=False)  # a read-only store of prepared data is fine
    return cfg


def parse_override(value: str) -> Any:
    """A command-line value as YAML, except that only true/false are booleans: YAML 1.1 would also
    read no/yes/on/off as booleans, turning train.mixed_precision=no or out_dir=on into False/True."""
    if not value.strip():
        return ""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value  # not YAML (e.g. an unbalanced bracket): the text itself
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        return value.strip()
    return parsed


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Rebuild a ModelConfig from a checkpoint's JSON, refusing unknown fields."""
    cfg = ModelConfig()
    for key, value in data.items():
        try:
            set_field(cfg, key, value, "model.")
        except UserError as e:
            raise UserError(f"{e} (in a saved model config)") from None
    return cfg


def set_field(section: Any, key: str, value: Any, prefix: str) -> None:
    fields = section_fields(section)
    if key not in fields:
        raise UserError(f"unknown config key '{prefix}{key}'")
    setattr(section, key, convert(f"{prefix}{key}", value, fields[key][1], from_cli=isinstance(value, str)))
