"""Run the real trainer, but make one rank fail at one step: raise an error, or die without a word.

FAIL_RANK=1 FAIL_STEP=3 FAIL_HOW=raise|exit accelerate launch ... tests/helpers/fail_at_step.py key=value ...
"""

import os
import sys

import gpt.trainer
from gpt.config import load_config

FAIL_RANK = int(os.environ.get("FAIL_RANK", "1"))
FAIL_STEP = int(os.environ.get("FAIL_STEP", "3"))
FAIL_HOW = os.environ.get("FAIL_HOW", "raise")
real_lr_at = gpt.trainer.lr_at


def lr_at_or_fail(step, t, progress=None):
    """The trainer asks for the learning rate once at the start of every step: fail there."""
    if step == FAIL_STEP and int(os.environ.get("RANK", "0")) == FAIL_RANK:
        if FAIL_HOW == "exit":
            os._exit(13)  # a crash: no exception, no clean-up
        raise RuntimeError(f"rank {FAIL_RANK} failed on purpose at step {FAIL_STEP}")
    return real_lr_at(step, t, progress)


if __name__ == "__main__":
    gpt.trainer.lr_at = lr_at_or_fail
    gpt.trainer.train(load_config(sys.argv[1:]))
