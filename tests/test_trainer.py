"""The training loop's own arithmetic: gradient accumulation over the processes, the note on when the next
log line comes."""

from __future__ import annotations

import pytest


def test_a_slow_first_step_says_when_the_next_line_comes():
    from gpt.config import TrainConfig
    from gpt.trainer import next_line_note

    t = TrainConfig(log_interval=50, max_steps=1500)
    assert next_line_note(1, {"step_ms": 2000.0}, t) == "next line at step 50, in about 98 s"
    assert next_line_note(1, {"step_ms": 100.0}, t) == ""  # 5 s away: no note
    assert next_line_note(50, {"step_ms": 2000.0}, t) == ""
    assert next_line_note(1, {"step_ms": 2000.0}, TrainConfig(log_interval=50, max_steps=20)).startswith(
        "next line at step 20,"
    )


@pytest.mark.parametrize("world", [3])
def test_indivisible_batch_is_refused_with_the_numbers(world):
    from gpt.errors import UserError
    from gpt.trainer import accumulation_steps

    with pytest.raises(UserError, match=r"batch_size \(32\) is not a multiple of .* \(4\) x 3 processes = 12"):
        accumulation_steps(32, 4, world)
