"""Hang watchdog: a step that makes no progress for `train.hang_timeout_s` becomes a
diagnosable failure instead of a silent stall.

Each rank runs one daemon thread. The training loop calls `beat()` at every step boundary
(and around long one-off work such as checkpoint saves). If no beat comes for the timeout,
the thread writes every Python thread's stack of this rank (faulthandler: works while the
main thread is blocked inside a C call such as a collective) to
`<run_dir>/hang/rank<R>.txt`, says so on stderr, and exits the process with status 124
(what `timeout` uses) so the launcher tears the job down. Ranks time out independently, so
every rank that is stuck leaves its own stack.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time

HANG_EXIT = 124


class Watchdog:
    def __init__(self, timeout_s: float, run_dir: str, rank: int):
        self.timeout_s, self.run_dir, self.rank = float(timeout_s), run_dir, rank
        self._last = time.monotonic()
        self._what = "start-up"
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> "Watchdog":
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._watch, name="distca-watchdog", daemon=True)
            self._thread.start()
        return self

    def beat(self, what: str) -> None:
        """Progress: `what` is where the loop is now (named in the report if it stalls)."""
        self._last, self._what = time.monotonic(), what

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            idle = time.monotonic() - self._last
            if idle >= self.timeout_s:
                self._report(idle)

    def _report(self, idle: float) -> None:
        folder = os.path.join(self.run_dir, "hang")
        path = os.path.join(folder, f"rank{self.rank}.txt")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path, "w") as f:
                f.write(f"rank {self.rank}: no progress for {idle:.0f} s (train.hang_timeout_s="
                        f"{self.timeout_s:g}) in: {self._what}\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
        except OSError:
            path = "(could not write the run dir; stacks on stderr)"
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        print(f"distca: rank {self.rank} made no progress for {idle:.0f} s in {self._what}; "
              f"every thread's stack is in {path}. Raise train.hang_timeout_s if the step is "
              "legitimately this slow.", file=sys.stderr, flush=True)
        os._exit(HANG_EXIT)
