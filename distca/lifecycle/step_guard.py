"""Loss guard: a step whose loss or gradient norm is not finite changes no weight.

The engine already skips the optimizer update when the whole model's gradient norm is not
finite (parallel/data_parallel.py; every rank sees the same norm, so all skip together);
this counts such steps, and the trainer neither saves a checkpoint on one nor goes on past
`train.max_bad_steps` of them in a row (`exhausted`): the run stops with `failure(...)`, its newest
checkpoint being the last good state.
"""
from __future__ import annotations

import math


class TrainingFailure(RuntimeError):
    """The run cannot go on; the message says why and what to do. Exit status `exit_code`."""
    exit_code = 1


class TooManyBadSteps(TrainingFailure):
    exit_code = 3


class StepGuard:
    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0      # bad steps so far (the metric skipped_steps)
        self.in_a_row = 0

    def update(self, step: int, loss: float, grad_norm: float | None) -> bool:
        """Record a step; True if it was bad. Raises TooManyBadSteps past the limit."""
        bad = not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm))
        self.skipped += bad
        self.in_a_row = self.in_a_row + 1 if bad else 0
        return bad

    @property
    def exhausted(self) -> bool:
        """train.max_bad_steps bad steps in a row: the run must stop."""
        return bool(self.max_bad_steps) and self.in_a_row >= self.max_bad_steps

    def failure(self, step: int, checkpoint: int | None, ckpt_dir: str) -> TooManyBadSteps:
        last = (f"the newest checkpoint, step {checkpoint} in {ckpt_dir}, is the last good state"
                if checkpoint is not None else "no checkpoint was saved")
        return TooManyBadSteps(
            f"{self.in_a_row} steps in a row (up to step {step}) had a non-finite loss or "
            f"gradient norm and were skipped (train.max_bad_steps={self.max_bad_steps}); "
            f"{last}. Lower train.lr or raise train.warmup_steps, check the data, then resume "
            "with the same run_dir")
