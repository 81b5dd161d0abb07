"""Run the real trainer with a crash on its first attempt only, chosen by the FAULT environment variable.

FAULT=crash_once:10        raise after the checkpoint of step 10, on the first attempt only
                           (TORCHELASTIC_RESTART_COUNT == 0), so a launcher restart can resume

(Kills and full disks at named moments need no helper: train.py reads GPT_FAULT, see
gpt.checkpoint.fault_point.)
"""

import os
import sys

from gpt import trainer
from gpt.config import load_config


def inject(fault: str) -> None:
    kind, step = fault.split(":")
    step = int(step)
    if kind != "crash_once":
        raise SystemExit(f"unknown FAULT {fault}")
    real_save = trainer.save

    def save(run, at_step, *args, **kwargs):
        path = real_save(run, at_step, *args, **kwargs)
        if at_step == step and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            raise RuntimeError(f"injected crash after step {step}")
        return path

    trainer.save = save


if __name__ == "__main__":
    if os.environ.get("FAULT"):
        inject(os.environ["FAULT"])
    trainer.train(load_config(sys.argv[1:]))
