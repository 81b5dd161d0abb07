"""gpt.step_plan: what the end of each optimizer step does, decided from values every process shares."""

import pytest

from gpt.step_plan import StepPlan, step_plan

# max_steps, log_interval, eval_interval, checkpoint_interval
INTERVALS = dict(max_steps=100, log_interval=10, eval_interval=25, checkpoint_interval=50)


def plan(step: int, budget_spent: bool = False, **changes: int) -> StepPlan:
    return step_plan(step, **(INTERVALS | changes), budget_spent=budget_spent)


def test_an_ordinary_step_runs_no_collective_and_keeps_the_timer():
    p = plan(7)
    assert not (p.log or p.evaluate or p.check_stop or p.save or p.stop or p.last or p.reset_timer)


def test_step_one_logs_at_once_and_checks_for_a_stop_signal():
    p = plan(1)
    assert p.log and p.check_stop and p.reset_timer
    assert not (p.evaluate or p.save or p.last)


@pytest.mark.parametrize(
    "step, log, evaluate, save",
    [(10, True, False, False), (25, False, True, False), (50, True, True, True), (30, True, False, False)],
)
def test_interval_boundaries(step, log, evaluate, save):
    p = plan(step)
    assert (p.log, p.evaluate, p.save) == (log, evaluate, save)
    assert p.check_stop and p.reset_timer and not p.last  # every logging, evaluation or checkpoint step


def test_a_checkpoint_step_that_neither_logs_nor_evaluates_still_checks_for_a_stop():
    p = plan(7, checkpoint_interval=7, log_interval=1000, eval_interval=1000)
    assert p.save and p.check_stop and not (p.log or p.evaluate)


def test_the_last_step_logs_evaluates_and_saves_off_every_interval():
    p = plan(99, max_steps=99)
    assert p.last and p.log and p.evaluate and p.save and p.check_stop and not p.stop


def test_a_spent_time_budget_ends_the_run_like_the_last_step():
    assert plan(33, budget_spent=True) == plan(33, max_steps=33)
    assert plan(33, budget_spent=True).last


def test_an_agreed_stop_signal_saves_and_stops_only_when_agreed():
    p = plan(10)  # a logging step: not a checkpoint step
    stopped = p.stopping(True)
    assert stopped.save and stopped.stop and stopped.log == p.log and stopped.evaluate == p.evaluate
    assert p.stopping(False) == p and not p.save


def test_a_resumed_run_goes_on_counting_and_does_not_log_its_first_step_off_interval():
    # resumed from step 50: its first step is 51, planned as in an uninterrupted run
    assert not plan(51).log and not plan(51).check_stop
    assert plan(60).log and plan(75).evaluate and plan(100).last


def test_the_stop_check_comes_exactly_with_logging_evaluation_and_checkpoint_steps():
    for step in range(1, 101):
        p = plan(step)
        assert p.check_stop == (p.log or p.evaluate or step % 50 == 0), step
