"""Resumable checkpoints and the portable model export, written atomically and checked on load.

Layout of a run directory::

    out_dir/checkpoints/step-0002000/      one complete checkpoint
        model.safetensors                  weights, plain parameter names (no DDP/compile prefixes)
        optimizer.bin, scaler.pt, random_states_<rank>.pkl   accelerate's save_state (torch pickles, below)
        trainer_state.json                 step, config, W&B run id, metrics
        model/                             the portable export that sample.py reads
            model.safetensors  config.json  tokenizer.json
        manifest.json                      format version, size and sha256 of every file; written last
    out_dir/checkpoints/latest             name of the newest complete checkpoint

A checkpoint is written under a temporary name; every file and folder in it is fsynced before its
manifest is written, and it is renamed into place (and the rename fsynced) before ``latest`` moves
and before older checkpoints are deleted, so a crash or power cut at any moment leaves at least the
previous checkpoint usable. Old checkpoints are renamed away before they are deleted, so a reader
sees a checkpoint whole or not at all. Resuming falls back to the newest checkpoint that verifies.

Weights are safetensors and metadata is JSON. ``optimizer.bin``, ``scaler.pt`` and
``random_states_<rank>.pkl`` are torch pickles, which accelerate loads with
``torch.load(weights_only=True)``: that unpickler rebuilds tensors, numbers and plain containers
only (plus numpy's random state, which accelerate allows for the RNG files) and runs no code.

Tests inject faults at named points of a save or a resume through ``gpt.faults.fault_point``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt import __version__
from gpt.config import ModelConfig, architecture_fields, model_config_from_dict, to_dict
from gpt.durable import atomic_write_text, fsync_dir, hash_once
from gpt.errors import UserError
from gpt.faults import fault_point
from gpt.tokenizer import Tokenizer, save_tokenizer

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state.json"
EXPORT_DIR = "model"
FORMAT_VERSION = 1  # of the checkpoint layout; raise it when a change makes older code misread a checkpoint
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


class NewerFormatError(UserError):
    """A checkpoint or export written by a newer gpt: refused, never skipped over as damaged."""


def write_manifest(folder: Path) -> None:
    """fsync every file and folder, then record size and hash of every file; its presence marks the
    checkpoint complete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    seen: dict[tuple[int, int], str] = {}
    entries = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": hash_once(p, seen, sync=True)} for p in files
    }
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        fsync_dir(sub)
    manifest = {"format_version": FORMAT_VERSION, "written_by": f"gpt {__version__}", "files": entries}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))


def check_format(version: Any, written_by: Any, path: Path) -> None:
    """Refuse what a newer gpt wrote, naming both versions."""
    if not isinstance(version, int):
        raise UserError(f"{path} has a corrupt format_version ({version!r}); the file is damaged")
    if version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{path} has format version {version} (written by {written_by or 'a newer gpt'}); this is gpt "
            f"{__version__}, which reads format version {FORMAT_VERSION} and older: upgrade gpt to read it"
        )


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, checked for shape and format version."""
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"checkpoint {folder} is incomplete (no {MANIFEST}); it was interrupted while saving")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        entries = data["files"]
        check_format(data.get("format_version", 1), data.get("written_by"), path)
        if not all(isinstance(meta["bytes"], int) and isinstance(meta["sha256"], str) for meta in entries.values()):
            raise TypeError("an entry has a mistyped field")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"checkpoint {folder} has a corrupt {MANIFEST} ({type(e).__name__}: {e})") from None
    return entries


def verify(folder: Path, only: str | None = None) -> None:
    """Check the manifest (of the whole checkpoint, or of files under ``only``); name what is wrong."""
    entries = read_manifest(folder)
    seen: dict[tuple[int, int], str] = {}
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
        if hash_once(path, seen) != meta["sha256"]:
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


def tmp_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(out_dir) / f".tmp-{step_dir_name(step)}"


def begin_save(out_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (call on the main process only)."""
    tmp = tmp_dir(out_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fault_point("save.begin", step)
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
    config = {"format_version": FORMAT_VERSION, "model": to_dict(model_cfg), "tokenizer": tokenizer.identity, **meta}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_tokenizer(tokenizer, folder / "tokenizer.json")


def finish_save(
    tmp: Path, out_dir: str | Path, step: int, trainer_state: dict, keep_last: int, keep_best: bool = False
) -> Path:
    """Write metadata and manifest (after fsyncing everything), rename into place, move ``latest``,
    and only then delete old checkpoints."""
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
    fault_point("save.manifest", step)
    write_manifest(tmp)
    fault_point("save.publish", step)
    final = checkpoints_dir(out_dir) / step_dir_name(step)
    if final.exists():  # a checkpoint of the same step from an earlier attempt: replace it
        discard(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    fault_point("save.latest", step)
    atomic_write_text(checkpoints_dir(out_dir) / "latest", final.name + "\n")
    rotate(out_dir, keep_last, keep_best, step)
    return final


def discard(folder: Path) -> None:
    """Delete a checkpoint so that readers see it whole or not at all: rename it away first."""
    trash = folder.with_name(f".trash-{folder.name}")
    if trash.exists():
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def val_loss_of(folder: Path) -> float | None:
    try:
        loss = json.loads((folder / TRAINER_STATE).read_bytes()).get("metrics", {}).get("eval/val/loss")
    except (OSError, ValueError, AttributeError):  # unreadable: not a candidate for the best
        return None
    return loss if isinstance(loss, (int, float)) else None


def rotate(out_dir: str | Path, keep_last: int, keep_best: bool, step: int | None = None) -> None:
    """Delete complete checkpoints beyond the newest keep_last, sparing the best one if asked."""
    complete = complete_checkpoints(out_dir)
    keep = set(complete[-keep_last:])
    if keep_best:
        scored = [(loss, p) for p in complete if (loss := val_loss_of(p)) is not None]
        if scored:
            best = min(scored)[1]
            keep.add(best)
            atomic_write_text(checkpoints_dir(out_dir) / "best", best.name + "\n")
    for old in complete:
        if old not in keep:
            discard(old)
            fault_point("save.rotate", step)
    root = checkpoints_dir(out_dir)
    for stale in [*root.glob(".tmp-step-*"), *root.glob(".trash-step-*")]:  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(clean_state_dict(state), str(path), metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------------
# Reading

# trainer_state.json fields that resuming reads, with their types
_STATE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "step": int, "config": dict, "vocab_size": int, "tokenizer": str, "metrics": dict,
    "wandb_id": (str, type(None)), "elapsed_s": (int, float),
}  # fmt: skip


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """trainer_state.json, with the fields that resuming reads checked for presence and type."""
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {folder} has an unreadable {TRAINER_STATE} ({e})") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a JSON object; the checkpoint is damaged")
    for key, kind in _STATE_FIELDS.items():
        if key not in state and key in ("wandb_id", "elapsed_s", "metrics"):
            continue  # optional (older checkpoints lack some)
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            found = repr(state[key]) if key in state else "missing"
            raise UserError(f"{path}: field {key!r} is {found}, expected {_type_name(kind)}; it is damaged")
    if not isinstance(state["config"].get("model"), dict):
        raise UserError(f"{path}: field 'config' has no 'model' section; the checkpoint is damaged")
    return state


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """safetensors weights, refused with the tensor's name when one holds NaN or infinity."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:  # safetensors reports a missing file as RuntimeError
        raise UserError(f"cannot read weights {path}: {e}; the file is corrupt or not a safetensors file") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(
                f"weights in {path} are not finite: tensor {name!r} holds NaN or infinity (the run diverged "
                "before this save); use an earlier checkpoint"
            )
    return state


def load_into(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into a plain model, strictly, with one clear error on mismatch."""
    state = load_weights(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise UserError(f"weights in {path} do not fit the model: {' '.join(first)}") from None


def check_same_model(saved: dict[str, Any], current: ModelConfig, folder: Path) -> None:
    """Refuse to resume into a model of another shape, naming the field that differs."""
    now = to_dict(current)
    defaults = to_dict(ModelConfig())  # for keys that older checkpoints do not have
    for key in architecture_fields():
        if saved.get(key, defaults[key]) != now.get(key):
            raise UserError(
                f"cannot resume from {folder}: model.{key} is {saved.get(key, defaults[key])!r} in the checkpoint but "
                f"{now.get(key)!r} now; use the checkpoint's value or another out_dir"
            )


def model_config_of(folder: Path) -> ModelConfig:
    return model_config_from_dict(read_trainer_state(folder)["config"]["model"])
