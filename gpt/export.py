"""Reading the portable model export (``out_dir/checkpoints/step-N/model/``, written by
``gpt.checkpoint.write_export``): what ``sample.py``, evaluation, serving and the transformers
conversion load. A run directory or a checkpoint folder names its newest export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gpt.checkpoint import EXPORT_DIR, MANIFEST, WEIGHTS, check_format, latest_checkpoint, load_into, verify
from gpt.config import model_config_from_dict, train_command
from gpt.errors import UserError
from gpt.model import build_model
from gpt.tokenizer import Tokenizer, load_tokenizer


def resolve_export(path: str | Path) -> Path:
    """The export folder for a run directory, a checkpoint folder, or an export folder itself."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / WEIGHTS).is_file():
        return path
    if (path / EXPORT_DIR / "config.json").is_file():
        return path / EXPORT_DIR
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest / EXPORT_DIR
    if not path.exists():
        raise UserError(f"{path} does not exist; give the out_dir of a training run, a checkpoint or a model folder")
    raise UserError(f"no checkpoint in {path}; train first ({train_command(path)}) or give another run")


def load_exported(path: str | Path) -> tuple[torch.nn.Module, Tokenizer, dict[str, Any]]:
    """A plain model (eval mode, CPU, fp32), its tokenizer and its metadata, from an export.

    Needs no lock on a run being trained: checkpoints appear whole (renamed into place) and vanish
    whole (renamed away); when rotation removes the one being read, the newest one is read instead.
    """
    attempts = 10
    for attempt in range(attempts):
        folder = resolve_export(path)
        try:
            return load_export_folder(folder)
        except (UserError, OSError):
            if folder.exists() or attempt == attempts - 1:  # still there: really damaged, not rotated away
                raise
    raise AssertionError("unreachable")


def load_export_folder(folder: Path) -> tuple[torch.nn.Module, Tokenizer, dict[str, Any]]:
    if (folder.parent / MANIFEST).is_file():
        verify(folder.parent, only=EXPORT_DIR + "/")
    config = folder / "config.json"
    try:
        meta = json.loads(config.read_bytes().decode("utf-8"))
        check_format(meta.get("format_version", 1), meta.get("written_by"), config)
        model_cfg = model_config_from_dict(meta["model"])
    except UserError as e:
        raise UserError(f"{config}: {e}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise UserError(f"{config} is not a valid model config ({type(e).__name__}: {e})") from None
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if tokenizer.identity != meta.get("tokenizer") or tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(
            f"{folder / 'tokenizer.json'} ({tokenizer.identity}) is not the tokenizer this model was trained with "
            f"({meta.get('tokenizer')})"
        )
    try:
        model = build_model(model_cfg)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"{config} describes no buildable model ({type(e).__name__}: {e})") from None
    load_into(model, folder / WEIGHTS)
    model.eval()
    return model, tokenizer, meta
