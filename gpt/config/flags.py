"""Command-line options generated from a dataclass's fields, their ``--help`` text from the field docs."""

from __future__ import annotations

from typing import Any

from gpt.config.fields import check_fields, section_fields, type_name
from gpt.config.loading import set_field


def parse_flags(section_type: type, argv: list[str], prog: str, description: str) -> Any:
    """Parse ``--name value`` flags into a dataclass, the ``--help`` text coming from the field docs."""
    import argparse

    from gpt.errors import ArgumentParser

    defaults = section_type()
    parser = ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, (f, tp) in section_fields(defaults).items():
        parser.add_argument(
            f"--{name}", default=None, metavar=type_name(tp).upper(),
            help=f"{f.metadata['doc']} (default: {getattr(defaults, name)!r})",
        )  # fmt: skip
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        if value is not None:
            set_field(defaults, name, value, prefix="--")
    check_fields(defaults, prefix="--")
    return defaults
