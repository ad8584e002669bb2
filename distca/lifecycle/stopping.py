"""Stopping cleanly: SIGTERM or a first Ctrl-C is acknowledged at once, the step finishes, every
rank saves, and the process exits 128 + signal (143 / 130) so schedulers see it was stopped.
A second Ctrl-C aborts at once (exit 130, nothing saved).

Where one step takes longer than a stop can wait (`LONG_STEP_S`: a GPU-sized model run on the
CPU with train.device=cpu), the first stop request aborts at once instead, without saving,
and says so: finishing an hours-long step is not what a SIGTERM or Ctrl-C asks for.

Aborts do not wait for the main thread: Python runs signal handlers only between bytecodes,
and one operator of a big model on a CPU can take a minute. The signal's C-level handler
writes its number to a pipe (`signal.set_wakeup_fd`) that a thread reads, so the decision
and an abort's exit happen within milliseconds. Where that pipe cannot be set up (not the
main thread) the Python handler decides instead.

Under torchrun a Ctrl-C reaches each rank twice (the terminal's SIGINT, then torchrun's
forwarded copy a moment later), so a repeat within `_SAME_PRESS_S` counts as the same press.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time

from distca.lifecycle import run_lock

_SAME_PRESS_S = 1.0
LONG_STEP_S = 600.0  # steps longer than this: a stop aborts the step instead of finishing it
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
    """Records the first SIGTERM / SIGINT; rank 0 says so immediately. `long_steps` (a reason,
    e.g. "a step takes about 0:15:00 here") makes any stop abort at once without saving."""
    def __init__(self, loud: bool, long_steps: str | None = None):
        self.signum: int | None = None
        self.long_steps = long_steps
        self._at = 0.0
        self._loud = loud
        self._old = {}
        self._decide_lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1
        self._exit = os._exit  # tests replace it

    def _decide(self, signum: int) -> None:
        """A stop signal arrived: acknowledge the first, abort on a second Ctrl-C or when a
        step is too long to finish."""
        with self._decide_lock:
            now = time.monotonic()
            repeat = self.signum is not None and now - self._at <= _SAME_PRESS_S
            if self.long_steps and not repeat:
                self._abort(signum, f"{_NAMES[signum]} received: {self.long_steps}, longer than a stop "
                                    "can wait, so the run stops now without saving; it resumes from its "
                                    "newest checkpoint (same run_dir)")
            elif self.signum is None:
                self.signum, self._at = signum, now
                self._say(f"{_NAMES[signum]} received: finishing this step, saving a checkpoint, then exiting"
                          + (" (Ctrl-C again to abort without saving)" if signum == signal.SIGINT else ""))
            elif signum == signal.SIGINT and not repeat:
                self._abort(signal.SIGINT, "aborted by a second Ctrl-C (nothing saved since the last checkpoint)")

    def _say(self, msg: str) -> None:
        if self._loud:
            print(f"\ndistca: {msg}", file=sys.stderr, flush=True)

    def _abort(self, signum: int, msg: str) -> None:
        self._say(msg)
        run_lock.release_all()  # the exit below skips atexit
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        self._exit(128 + signum)

    def _handler(self, signum, _frame):
        if self._pipe is None:  # no wakeup pipe: decide here, in the main thread
            self._decide(signum)

    def _watch(self, fd: int) -> None:
        try:
            while data := os.read(fd, 64):  # b"": the write end closed (__exit__)
                for signum in data:
                    if signum in _NAMES:
                        self._decide(signum)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self):
        for sig in _NAMES:
            with contextlib.suppress(ValueError):  # not the main thread (some test runners)
                self._old[sig] = signal.signal(sig, self._handler)
        if self._old:
            r, w = os.pipe()
            os.set_blocking(w, False)
            try:
                self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            except ValueError:
                os.close(r)
                os.close(w)
            else:
                self._pipe = (r, w)
                threading.Thread(target=self._watch, args=(r,), name="distca-stop-signals", daemon=True).start()
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            _, w = self._pipe
            self._pipe = None
            os.close(w)  # the watcher reads end-of-file, closes its end and returns
        return False
