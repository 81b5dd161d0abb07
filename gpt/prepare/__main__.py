"""``python -m gpt.prepare``: see gpt/prepare/cli.py."""

from gpt.errors import run_main
from gpt.prepare.cli import main

run_main(main)
