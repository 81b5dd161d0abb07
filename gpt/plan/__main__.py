"""python -m gpt.plan (see gpt.plan)."""

from gpt.errors import run_main
from gpt.plan.report import main

run_main(main)
