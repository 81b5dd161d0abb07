"""One clear error, before any work, for a folder that cannot be used: a file in its place or on its
path, or a read-only place (a read-only mount, or no write permission)."""

from __future__ import annotations

import os
from pathlib import Path

from gpt.errors import UserError


def folder_problem(folder: str | Path, writable: bool = True) -> str | None:
    """Why ``folder`` cannot be used as a folder (and, with ``writable``, created or written to), in
    words that follow its name; None when it can."""
    path = Path(folder)
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent  # the nearest part of the path that exists
    if os.path.lexists(existing) and not existing.is_dir():
        return "is a file" if existing == path else f"is under {existing}, which is a file"
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        return "is read-only" if existing == path else f"would be created in {existing}, which is read-only"
    return None


def check_folder(folder: str | Path, what: str, writable: bool = True) -> None:
    """Raise a UserError naming ``what`` (e.g. "out_dir") when ``folder`` cannot be used."""
    problem = folder_problem(folder, writable)
    if problem is not None:
        raise UserError(f"{what} {folder} {problem}; choose another folder")
