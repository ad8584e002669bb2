"""When a checkpoint is written: every `checkpoint.every` steps, every
`checkpoint.every_minutes` (by rank 0's clock, so every rank agrees through the step's one
flag collective), at the end (`checkpoint.save_final`) and when the run is stopped; never on a
step whose update was skipped (its state is not a good one to resume)."""
from __future__ import annotations

import time


class SavePolicy:
    def __init__(self, ccfg, steps: int, clock_rank: bool):
        self.every, self.minutes, self.final = ccfg.every, ccfg.every_minutes, ccfg.save_final
        self.steps, self.clock_rank = steps, clock_rank
        self.last = time.monotonic()

    def time_due(self) -> bool:
        """checkpoint.every_minutes have passed since the last save (rank 0 only decides)."""
        return bool(self.clock_rank and self.minutes and time.monotonic() - self.last >= 60 * self.minutes)

    def wanted(self, step: int, bad: bool, time_due: bool, stopping: bool) -> bool:
        if bad:
            return False
        return (time_due or stopping or bool(self.every and step % self.every == 0)
                or (step == self.steps and self.final))

    def saved(self) -> None:
        self.last = time.monotonic()
