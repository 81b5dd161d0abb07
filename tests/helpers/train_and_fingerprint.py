"""Run the real trainer, then write a hash of this process's final weights to OUT_DIR/weights-<rank>.txt.

accelerate launch ... tests/helpers/train_and_fingerprint.py key=value ...
"""

import hashlib
import os
import sys
from pathlib import Path

from gpt.config import load_config
from gpt.trainer import train


def fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    cfg = load_config(sys.argv[1:])
    result = train(cfg)
    rank = os.environ.get("RANK", "0")
    (Path(cfg.out_dir) / f"weights-{rank}.txt").write_text(fingerprint(result.model))
