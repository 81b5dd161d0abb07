"""The one exception type that reaches the user as a single line instead of a traceback."""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C
# Set by gpt.launch for the processes it starts: it prints their one-line errors itself, once for the job.
LAUNCHER_REPORTS_ERRORS = "GPT_LAUNCHER_REPORTS_ERRORS"
ERROR_FILE_KEY = "one_line_error"  # where the message goes in torch elastic's per-process error file


class UserError(Exception):
    """Bad input from the user: a config key, a data file, a checkpoint, a prompt.

    The message says what was wrong and what to do about it. Entry points catch it, print it on one
    line and exit with code 2.
    """


def print_error(message: str) -> None:
    """``error: message`` on stderr, or handed to gpt.launch to print once for the whole job."""
    if not report_to_launcher(message):
        print(f"error: {message}", file=sys.stderr, flush=True)


def report_to_launcher(message: str) -> bool:
    """Hand the message to gpt.launch through the error file torch's launcher gives each process
    (TORCHELASTIC_ERROR_FILE), so that a job of many processes prints it once; False when not
    launched that way."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not (path and os.environ.get(LAUNCHER_REPORTS_ERRORS)):
        return False
    try:  # the format torch reads back (ProcessFailure), plus our key
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time()), ERROR_FILE_KEY: message}, f)
    except OSError:
        return False
    return True


def run_main(main: Callable[[list[str]], int]) -> NoReturn:
    """Run an entry point's ``main(argv)`` and exit with its code; a UserError becomes one line on
    stderr and exit code 2, a KeyboardInterrupt (a second Ctrl-C) one line and exit code 130. A reader
    that closes the pipe early (``| head``) ends the program quietly, with the exit status of a Unix
    tool killed by SIGPIPE."""
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()  # here, where a closed pipe can still be caught, not at interpreter exit
    except UserError as e:
        print_error(str(e))
        code = EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout is closed: point it at /dev/null so that Python's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13  # as a process killed by SIGPIPE
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a bad or missing option raised as a UserError (one line) instead of
    printing the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")
