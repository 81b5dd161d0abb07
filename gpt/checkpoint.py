"""Resumable checkpoints and the portable model export, written atomically and checked on load.

Layout of a run directory::

    out_dir/checkpoints/step-0002000/      one complete checkpoint
        model.safetensors                  weights, plain parameter names (no DDP/compile prefixes)
        optimizer.bin, scaler.pt, random_states_<rank>.pkl   accelerate's save_state (tensors only)
        trainer_state.json                 step, config, W&B run id, metrics
        model/                             the portable export that sample.py reads
            model.safetensors  config.json  tokenizer.json
        manifest.json                      size and sha256 of every file; written last
    out_dir/checkpoints/latest             name of the newest complete checkpoint

A checkpoint is written under a temporary name and renamed into place once its manifest is on disk,
and ``latest`` moves only after that, so a crash during a save leaves the previous checkpoint usable.
Loading never unpickles: weights are safetensors, metadata is JSON, and accelerate loads the
optimizer, scaler and RNG files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt.config import ModelConfig, model_config_from_dict, to_dict, train_command
from gpt.errors import UserError
from gpt.model import build_model
from gpt.tokenizer import Tokenizer, load_tokenizer, save_tokenizer

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
EXPORT_DIR = "model"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes so weights load into a plain model, and make tensors contiguous on CPU."""
    out = {}
    for key, tensor in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
            key = key.replace("._orig_mod.", ".")
        out[key] = tensor.detach().to("cpu").contiguous()
    return out


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record size and hash of every file; its presence marks the checkpoint complete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    _atomic_write_text(folder / MANIFEST, json.dumps({"files": entries}, indent=1))


def verify(folder: Path, only: str | None = None) -> None:
    """Check the manifest (of the whole checkpoint, or of files under ``only``); name what is wrong."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise UserError(f"checkpoint {folder} is incomplete (no {MANIFEST}); it was interrupted while saving")
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"checkpoint {folder} has a corrupt {MANIFEST} ({e})") from None
    for name, meta in entries.items():
        if only is not None and not name.startswith(only):
            continue
        path = folder / name
        if not path.is_file():
            raise UserError(f"checkpoint file {path} is missing")
        if path.stat().st_size != meta["bytes"]:
            raise UserError(
                f"checkpoint file {path} is truncated or corrupt: {path.stat().st_size} bytes, expected {meta['bytes']}"
            )
        if _sha256(path) != meta["sha256"]:
            raise UserError(f"checkpoint file {path} is corrupt: its sha256 does not match {folder / MANIFEST}")


# ----------------------------------------------------------------------------------------------
# Finding checkpoints


def checkpoints_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest first."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / MANIFEST).is_file())


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, following ``latest`` when it points at a complete one."""
    root = checkpoints_dir(out_dir)
    pointer = root / "latest"
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if (target / MANIFEST).is_file():
            newer = [p for p in complete_checkpoints(out_dir) if p.name > target.name]
            return newer[-1] if newer else target
    found = complete_checkpoints(out_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------------------
# Writing


def begin_save(out_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (call on the main process only)."""
    tmp = checkpoints_dir(out_dir) / f".tmp-{step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def umask_file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under the usual 022)."""
    try:  # Linux reports the umask; reading it with os.umask would briefly change it for every thread
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def write_export(folder: Path, weights_file: Path, model_cfg: ModelConfig, tokenizer: Tokenizer, meta: dict) -> None:
    """The portable model: weights (hard link to the resume weights when possible), config, tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.link(weights_file, folder / WEIGHTS)
    except OSError:
        shutil.copyfile(weights_file, folder / WEIGHTS)
    os.chmod(folder / WEIGHTS, umask_file_mode())  # safetensors writes 0600; the export is for sharing
    config = {"model": to_dict(model_cfg), "tokenizer": tokenizer.identity, **meta}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(tokenizer, folder / "tokenizer.json")


def finish_save(
    tmp: Path, out_dir: str | Path, step: int, trainer_state: dict, keep_last: int, keep_best: bool = False
) -> Path:
    """Write metadata and manifest, rename into place, move ``latest``, delete old checkpoints."""
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
    write_manifest(tmp)
    final = checkpoints_dir(out_dir) / step_dir_name(step)
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(checkpoints_dir(out_dir) / "latest", final.name + "\n")
    rotate(out_dir, keep_last, keep_best)
    return final


def val_loss_of(folder: Path) -> float | None:
    try:
        return read_trainer_state(folder).get("metrics", {}).get("eval/val/loss")
    except UserError:
        return None


def rotate(out_dir: str | Path, keep_last: int, keep_best: bool) -> None:
    """Delete complete checkpoints beyond the newest keep_last, sparing the best one if asked."""
    complete = complete_checkpoints(out_dir)
    keep = set(complete[-keep_last:])
    if keep_best:
        scored = [(loss, p) for p in complete if (loss := val_loss_of(p)) is not None]
        if scored:
            best = min(scored)[1]
            keep.add(best)
            _atomic_write_text(checkpoints_dir(out_dir) / "best", best.name + "\n")
    for old in complete:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints_dir(out_dir).glob(".tmp-step-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(clean_state_dict(state), str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# Reading


def read_trainer_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {folder} has an unreadable {TRAINER_STATE} ({e})") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot read weights {path}: {e}; the file is corrupt or not a safetensors file") from None


def load_into(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into a plain model, strictly, with one clear error on mismatch."""
    state = load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise UserError(f"weights in {path} do not fit the model: {' '.join(first)}") from None


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
    """A plain model (eval mode, CPU, fp32), its tokenizer and its metadata, from an export."""
    folder = resolve_export(path)
    if (folder.parent / MANIFEST).is_file():
        verify(folder.parent, only=EXPORT_DIR + "/")
    try:
        meta = json.loads((folder / "config.json").read_text())
        model_cfg = model_config_from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{folder / 'config.json'} is not a valid model config ({e})") from None
    tokenizer = load_tokenizer(folder / "tokenizer.json")
    if tokenizer.identity != meta.get("tokenizer") or tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(
            f"{folder / 'tokenizer.json'} ({tokenizer.identity}) is not the tokenizer this model was trained with "
            f"({meta.get('tokenizer')})"
        )
    model = build_model(model_cfg)
    load_into(model, folder / WEIGHTS)
    model.eval()
    return model, tokenizer, meta


def check_same_model(saved: dict[str, Any], current: ModelConfig, folder: Path) -> None:
    """Refuse to resume into a model of another shape, naming the field that differs."""
    now = to_dict(current)
    shape_keys = ("kind", "n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "pad_vocab_to")
    architecture_keys = ("position", "rope_base", "norm", "qk_norm", "mlp", "gelu", "tie_head")
    defaults = to_dict(ModelConfig())  # for keys that older checkpoints do not have
    for key in shape_keys + architecture_keys:
        if saved.get(key, defaults[key]) != now.get(key):
            raise UserError(
                f"cannot resume from {folder}: model.{key} is {saved.get(key, defaults[key])!r} in the checkpoint but "
                f"{now.get(key)!r} now; use the checkpoint's value or another out_dir"
            )


def model_config_of(folder: Path) -> ModelConfig:
    return model_config_from_dict(read_trainer_state(folder)["config"]["model"])
