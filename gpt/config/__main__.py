"""python -m gpt.config: the config keys, or the values a preset and overrides give (see gpt.config)."""

from gpt.config.reference import main
from gpt.errors import run_main

run_main(main)
