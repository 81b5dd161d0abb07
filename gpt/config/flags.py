"""The command line of every entry point, in one style.

A command's own options are the fields of a dataclass, declared with ``doc()``: ``--name VALUE`` (or
``--name=VALUE``), ``--name`` / ``--no-name`` for a boolean, and a few ``positional`` ones (paths);
their ``--help`` text is the field's documentation and their values are checked by its rule. A
command that builds a training config (train.py, gpt.bench, gpt.plan, gpt.config) also takes
``[PRESET] [key.sub=value ...]``, read by ``load_config``: ``key=value`` always names a key of the
training config, ``--name`` always an option of the command. A bad option is one line (a UserError:
``gpt.errors.run_main`` prints it and exits 2), with the nearest option when one is close.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any, Literal, get_origin

from gpt.config.fields import check_fields, section_fields, type_name
from gpt.config.loading import set_field
from gpt.errors import ArgumentParser, UserError

CONFIG_ARGS = "[PRESET] [key.sub=value ...]"


def parse_flags(options_type: type, argv: list[str], prog: str, description: str) -> Any:
    """A command's options, from ``--name value`` flags (and its positional fields) into ``options_type``."""
    options, _ = _parse(options_type, argv, prog, description, takes_config=False, epilog=None)
    return options


def parse_command(
    options_type: type | None, argv: list[str], prog: str, description: str, epilog: str | None = None
) -> tuple[Any, list[str]]:
    """A command that builds a training config: its options (None when it has none) and the
    ``[PRESET] [key.sub=value ...]`` arguments, in their order, for ``load_config``."""
    if epilog is None:
        epilog = "PRESET and key.sub=value are those of train.py: python -m gpt.config lists the keys."
    return _parse(options_type, argv, prog, description, takes_config=True, epilog=epilog)


def option_parser(
    options_type: type | None, prog: str, description: str, usage: str | None, epilog: str | None
) -> ArgumentParser:
    """The argparse parser of a command's options, one argument per field of ``options_type``."""
    parser = ArgumentParser(
        prog=prog, description=description, usage=usage, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    defaults = options_type() if options_type is not None else None
    for name, (f, tp) in (section_fields(defaults) if defaults is not None else {}).items():
        text = f.metadata["doc"]
        if f.metadata.get("positional"):
            parser.add_argument(name, metavar=name.upper(), nargs="+" if get_origin(tp) is list else None, help=text)
        elif tp is bool:
            parser.add_argument(
                f"--{name}", default=None, action=argparse.BooleanOptionalAction,
                help=f"{text} (default: {getattr(defaults, name)!r})",
            )  # fmt: skip
        else:
            choices = get_origin(tp) is Literal  # shown as they are written: a|b|c
            parser.add_argument(
                f"--{name}", default=None, metavar=type_name(tp) if choices else type_name(tp).upper(),
                help=f"{text} (default: {getattr(defaults, name)!r})",
            )  # fmt: skip
    return parser


def _parse(
    options_type: type | None, argv: list[str], prog: str, description: str, takes_config: bool, epilog: str | None
) -> tuple[Any, list[str]]:
    usage = f"{prog} {CONFIG_ARGS} [options]" if takes_config else None
    parser = option_parser(options_type, prog, description, usage, epilog)
    args, rest = parser.parse_known_args(argv)
    config_args = [a for a in rest if "=" in a or not a.startswith("-")]  # --key=value is a config key too
    unknown = [a for a in rest if a not in config_args] if takes_config else rest
    if unknown:
        raise UserError(_unknown_argument(unknown[0], _flags(options_type), prog))
    if options_type is None:
        return None, config_args
    options = options_type()
    for name, value in vars(args).items():
        if value is not None:
            set_field(options, name, value, prefix="--")
    check_fields(options, prefix="--")
    return options, config_args


def _flags(options_type: type | None) -> list[str]:
    """Every ``--flag`` a command takes."""
    fields = section_fields(options_type()) if options_type is not None else {}
    named = [name for name, (f, _) in fields.items() if not f.metadata.get("positional")]
    negated = [f"no-{name}" for name, (_, tp) in fields.items() if tp is bool]
    return [f"--{name}" for name in ["help", *named, *negated]]


def _unknown_argument(arg: str, flags: list[str], prog: str) -> str:
    if arg.startswith("-"):
        close = difflib.get_close_matches(arg.split("=")[0], flags, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown option '{arg}': {hint}see {prog} --help"
    name = arg.split("=")[0]
    if f"--{name}" in flags:
        return f"unexpected argument '{arg}': options are written --{name} VALUE; see {prog} --help"
    return f"unexpected argument '{arg}'; see {prog} --help"
