"""Resuming: the random states of each process."""

from __future__ import annotations

import pytest

from gpt.errors import UserError


def test_a_missing_rng_file_is_a_warning_and_an_unreadable_one_is_refused(tmp_path):
    from gpt.resume import check_rng_state

    assert "process 1 starts with fresh random states" in check_rng_state(tmp_path, rank=1)
    (tmp_path / "random_states_1.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot resume exactly: .*random_states_1.pkl is unreadable"):
        check_rng_state(tmp_path, rank=1)
