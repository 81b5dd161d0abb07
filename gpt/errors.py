"""The one exception type that reaches the user as a single line instead of a traceback."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class UserError(Exception):
    """Bad input from the user: a config key, a data file, a checkpoint, a prompt.

    The message says what was wrong and what to do about it. Entry points catch it, print it on one
    line and exit with code 2.
    """


def run_main(main: Callable[[list[str]], int]) -> NoReturn:
    """Run an entry point's ``main(argv)`` and exit with its code; a UserError becomes one line on
    stderr and exit code 2."""
    try:
        code = main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a bad or missing option raised as a UserError (one line) instead of
    printing the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")
