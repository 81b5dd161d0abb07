"""What to do with what an output folder already holds: write, skip, refuse or replace.

``decide`` is the one rule, a pure function of what is there (``OnDisk``, read by ``look``) and what
was asked; ``claim_output`` applies it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpt.errors import UserError
from gpt.prepared import MANIFEST, STAGING
from gpt.token_files import HEADER_SIZE, dtype_for_vocab

Action = Literal["write", "skip", "replace"]


@dataclass(frozen=True)
class OnDisk:
    """What an output folder holds, as far as the rule goes."""

    files: bool  # anything a preparation writes: manifest, tokenizer, token files, partial files, staging folder
    interrupted: bool  # the staging folder of a preparation that did not finish is there
    complete: dict | None  # the settings of a complete preparation there (every shard whole), else None


def decide(on_disk: OnDisk, settings: dict, overwrite: bool, out: str | Path) -> Action:
    """``write`` into a folder that holds nothing of a preparation; ``skip`` a complete preparation
    with these settings; ``replace`` anything with ``overwrite``; otherwise refuse (a UserError that
    says what differs or what is there, and what to do)."""
    if not on_disk.files:
        return "write"
    if overwrite:
        return "replace"
    if on_disk.complete is not None:
        if on_disk.complete == settings:
            return "skip"
        before = on_disk.complete
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        raise UserError(
            f"{out} already holds a dataset prepared with other settings (different: {', '.join(changed)}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    what = "the remains of an interrupted preparation" if on_disk.interrupted else "token files"
    raise UserError(f"{out} already holds {what}; pass --overwrite to replace them, or choose another --out")


def look(out: Path) -> OnDisk:
    """What ``out`` holds, for ``decide``."""
    manifest = read_manifest(out)
    complete = manifest.get("settings", {}) if manifest is not None and is_complete(out, manifest) else None
    return OnDisk(files=bool(our_files(out)), interrupted=(out / STAGING).exists(), complete=complete)


def claim_output(out: Path, settings: dict, overwrite: bool) -> bool:
    """Make ``out`` ready for a new preparation; False when it already holds this exact one (skip)."""
    action = decide(look(out), settings, overwrite, out)
    if action == "replace":
        for path in our_files(out):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    return action != "skip"


def our_files(out: Path) -> list[Path]:
    """What a preparation writes into its output folder (and nothing else the user keeps there)."""
    if not out.is_dir():
        return []
    found = [out / n for n in (MANIFEST, "tokenizer.json", STAGING) if (out / n).exists()]
    return found + sorted(out.glob("*.tok")) + sorted(out.glob("*.tok.partial"))


def read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_complete(out: Path, manifest: dict) -> bool:
    """Every shard the manifest lists is there with its size, and no staging folder is left."""
    if (out / STAGING).exists() or not (out / "tokenizer.json").is_file():
        return False
    try:
        itemsize = dtype_for_vocab(manifest["vocab_size"]).itemsize
        shards = manifest["shards"]["train"] + manifest["shards"]["val"]
        sizes = {shard["file"]: HEADER_SIZE + shard["tokens"] * itemsize for shard in shards}
    except (KeyError, TypeError):  # a manifest this code did not write
        return False
    return all((out / name).is_file() and (out / name).stat().st_size == size for name, size in sizes.items())
