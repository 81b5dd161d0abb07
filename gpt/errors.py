"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: a config key, a data file, a checkpoint, a prompt.

    The message says what was wrong and what to do about it. Entry points catch it, print it on one
    line and exit with code 2.
    """
