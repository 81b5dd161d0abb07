"""The one exception type that reaches the user as a single line instead of a traceback."""

import os
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
    stderr and exit code 2. A reader that closes the pipe early (``| head``) ends the program quietly,
    with the exit status of a Unix tool killed by SIGPIPE."""
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()  # here, where a closed pipe can still be caught, not at interpreter exit
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except BrokenPipeError:
        # stdout is closed: point it at /dev/null so that Python's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13  # as a process killed by SIGPIPE
    sys.exit(code)
