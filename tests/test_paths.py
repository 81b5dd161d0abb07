"""Output and data folders: a place that cannot be written is named before any work."""

from __future__ import annotations

import pytest

from gpt.config import load_config
from gpt.errors import UserError


def test_read_only_places_are_named(tmp_path, monkeypatch):
    """Root may write anywhere, so a read-only folder is simulated: os.access says no."""
    from gpt import paths

    monkeypatch.setattr(paths.os, "access", lambda *a: False)
    with pytest.raises(UserError, match=f"out_dir {tmp_path / 'run'} would be created in {tmp_path}, which is read"):
        load_config([f"out_dir={tmp_path / 'run'}"])
    assert paths.folder_problem(tmp_path, writable=False) is None  # prepared data may be read-only
