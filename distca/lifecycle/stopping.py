"""Stopping cleanly: SIGTERM or a first Ctrl-C is acknowledged at once, the step finishes, every
rank saves, and the process exits 128 + signal (143 / 130) so schedulers see it was stopped.
A second Ctrl-C aborts at once (exit 130, nothing saved).

Under torchrun a Ctrl-C reaches each rank twice (the terminal's SIGINT, then torchrun's
forwarded copy a moment later), so a repeat within `_SAME_PRESS_S` counts as the same press.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time

_SAME_PRESS_S = 1.0
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}


class Stopped(Exception):
    """Raised by the trainer after the stop checkpoint was saved; main() exits 128 + signum."""
    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {_NAMES.get(signum, signum)} after step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Records the first SIGTERM / SIGINT; rank 0 says so immediately."""
    def __init__(self, loud: bool):
        self.signum: int | None = None
        self._at = 0.0
        self._loud = loud
        self._old = {}

    def _handler(self, signum, _frame):
        now = time.monotonic()
        if self.signum is None:
            self.signum, self._at = signum, now
            if self._loud:
                print(f"\ndistca: {_NAMES[signum]} received: finishing this step, saving a checkpoint, "
                      "then exiting" + (" (Ctrl-C again to abort without saving)" if signum == signal.SIGINT
                                        else ""), file=sys.stderr, flush=True)
        elif signum == signal.SIGINT and now - self._at > _SAME_PRESS_S:
            raise KeyboardInterrupt  # the second press: abort now

    def __enter__(self):
        for sig in _NAMES:
            with contextlib.suppress(ValueError):  # not the main thread (some test runners)
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
