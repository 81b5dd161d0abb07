"""Files that survive a crash or a power cut: fsynced writes, atomic replacement, hashing.

A file's fsync makes its bytes durable but not its name: a new entry or a rename in a folder is
durable only once the folder itself is fsynced, which is what ``fsync_dir`` is for.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (a file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:  # the data must be on disk before the manifest vouches for it
            os.fsync(f.fileno())
    return h.hexdigest()


def hash_once(path: Path, seen: dict[tuple[int, int], str], sync: bool = False) -> str:
    """sha256 of ``path``, hashing each inode once: the export's weights are a hard link to the resume weights."""
    st = path.stat()
    key = (st.st_dev, st.st_ino)
    if key not in seen:
        seen[key] = sha256(path, sync)
    return seen[key]


def bytes_on_disk(folder: Path) -> int:
    """Bytes the files under ``folder`` take, counting hard-linked files once."""
    seen: dict[tuple[int, int], int] = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())
