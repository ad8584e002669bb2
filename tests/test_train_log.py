"""train.log holds what was printed while the progress bar showed (a terminal run): rich's live
display swaps sys.stdout / sys.stderr for proxies that bypassed the log's tee, so in a terminal
the banner and warnings printed after the bar started were missing from the file."""
from __future__ import annotations

import io
import sys
from types import SimpleNamespace

from distca.observe import console
from distca.observe.metrics import MetricsLogger


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_printed_under_the_progress_bar_reach_train_log(tmp_path, monkeypatch):
    screen = _Terminal()
    monkeypatch.setattr(sys, "__stderr__", screen)  # the bar's console writes here, a "terminal"
    monkeypatch.setenv("TERM", "xterm")
    with console.mirror(str(tmp_path), True):
        logger = MetricsLogger(str(tmp_path), {}, SimpleNamespace(wandb=False, progress=True),
                               total_steps=3, enabled=True)
        assert logger._progress is not None, "the bar did not start: the test needs a terminal"
        print("distca: a banner line", file=sys.stderr)
        print("a line on stdout")
        logger.log({"step": 1, "loss": 2.5, "tokens_per_s": 1000.0, "max_mem_gib": 1.0, "step_time_s": 0.5})
        logger.close()
        print("distca: after the bar", file=sys.stderr)
    log = (tmp_path / "train.log").read_text()
    for line in ("distca: a banner line", "a line on stdout", "distca: after the bar"):
        assert log.count(line) == 1, (line, log)
    assert "step" in log and "\x1b[" not in log  # the step line, but none of the bar's codes
