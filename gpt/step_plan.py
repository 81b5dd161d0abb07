"""What the end of each optimizer step does, decided in one pure function.

After a step the loop may log, evaluate, check for a stop signal and save a checkpoint. Logging
(the loss reduced over processes), evaluation, the stop check (with several processes) and saving
each run collectives: every process must take part in the same ones, in the same order, or the job
hangs until the collective timeout. So the plan is a function of values that are the same on every
process (the step, the config's intervals, the time budget's verdict, which the main process's clock
decides for all, and the stop signal once the processes have agreed on it), never of one process's
own state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StepPlan:
    """The end of one optimizer step; each field that is true runs collectives on every process."""

    log: bool  # reduce the loss over processes and log a line
    evaluate: bool  # the in-loop evaluation (gpt.evaluation.sampled_losses, the eval tasks)
    check_stop: bool  # agree on a stop signal (gpt.signals.StopRequest.agreed)
    save: bool  # save a checkpoint (gpt.resume.save)
    stop: bool  # a stop signal was agreed: exit (after saving) for a restart to resume
    last: bool  # the last step of the run (train.max_steps, or the time budget spent)

    @property
    def reset_timer(self) -> bool:
        """Throughput is measured over training steps only: restart it after logging, evaluation or saving."""
        return self.log or self.evaluate or self.save

    def stopping(self, agreed: bool) -> StepPlan:
        """This plan once the processes have agreed (``check_stop``) whether to stop: a stop saves."""
        return replace(self, save=self.save or agreed, stop=agreed) if agreed else self


def step_plan(
    step: int, max_steps: int, log_interval: int, eval_interval: int, checkpoint_interval: int, budget_spent: bool
) -> StepPlan:
    """The plan after optimizer step ``step`` (counted from 1; a resumed run goes on counting).

    The last step logs, evaluates and saves; step 1 logs, so a first line comes at once (a resumed
    run logs at its intervals only). The stop check comes with logging, evaluation and checkpoint
    steps, so a stop signal is acted on within one checkpoint interval."""
    last = step >= max_steps or budget_spent
    log = step % log_interval == 0 or last or step == 1
    evaluate = step % eval_interval == 0 or last
    scheduled_save = step % checkpoint_interval == 0
    return StepPlan(
        log=log,
        evaluate=evaluate,
        check_stop=log or evaluate or scheduled_save,
        save=scheduled_save or last,
        stop=False,
        last=last,
    )
