"""Run the real trainer with one fault injected, chosen by the FAULT environment variable.

FAULT=kill_after_save:10   SIGKILL this process right after the checkpoint of step 10 is complete
FAULT=kill_in_save:20      SIGKILL this process while saving step 20, before its manifest is written
FAULT=crash_once:10        raise after the checkpoint of step 10, on the first attempt only
                           (TORCHELASTIC_RESTART_COUNT == 0), so a launcher restart can resume
"""

import os
import signal
import sys

from gpt import checkpoint, trainer
from gpt.config import load_config


def inject(fault: str) -> None:
    kind, step = fault.split(":")
    step = int(step)
    if kind in ("kill_after_save", "crash_once"):
        real_save = trainer.save

        def save(run, at_step, *args, **kwargs):
            path = real_save(run, at_step, *args, **kwargs)
            if at_step == step:
                if kind == "kill_after_save":
                    os.kill(os.getpid(), signal.SIGKILL)
                if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
                    raise RuntimeError(f"injected crash after step {step}")
            return path

        trainer.save = save
    elif kind == "kill_in_save":
        real_manifest = checkpoint.write_manifest

        def write_manifest(folder):
            if folder.name.endswith(checkpoint.step_dir_name(step)):
                os.kill(os.getpid(), signal.SIGKILL)
            real_manifest(folder)

        checkpoint.write_manifest = write_manifest
    else:
        raise SystemExit(f"unknown FAULT {fault}")


if __name__ == "__main__":
    if os.environ.get("FAULT"):
        inject(os.environ["FAULT"])
    trainer.train(load_config(sys.argv[1:]))
