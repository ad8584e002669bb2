"""One interface for step metrics: metrics.jsonl, the console line / progress bar, and W&B.

Only rank 0 logs. metrics.jsonl gets every step (resume checks and reports read it); the
console line and W&B get every `train.log_every`-th step, plus the first and the last.
W&B starts through `wandb_start.py` (offline, and said so, where online would prompt or hang).
`mfu` is null where the device's peak is unknown (CPUs, unlisted GPUs). wandb is imported
lazily so runs without it never pay for the import.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from distca.observe.console import clock, human, keep_mirroring, log_only
from distca.observe.wandb_start import start_wandb


DATA_WAIT_SHOWN = 0.05  # the step line names the data wait when it exceeds this share of the step


def step_line(m: dict, total: int, elapsed: float, eta: float | None) -> str:
    """One step in at most 80 columns: step, loss, throughput, MFU (or n/a), memory, time; when
    the step waited for its data more than 5% of its time, that share replaces the elapsed time."""
    mfu = "n/a" if m.get("mfu") is None else f"{m['mfu']:.0%}"
    width = len(str(total))
    eta_s = "" if eta is None else f" eta {clock(eta)}"
    wait, step_s = m.get("data_wait_s") or 0.0, m.get("step_time_s") or 0.0
    when = f"data {wait / step_s:.0%}" if step_s > 0 and wait > DATA_WAIT_SHOWN * step_s else clock(elapsed)
    return (f"step {m['step']:>{width}}/{total} loss {m['loss']:.4f} {human(m['tokens_per_s'])} tok/s "
            f"mfu {mfu} {m['max_mem_gib']:.{1 if m['max_mem_gib'] < 10 else 0}f}GiB {when}{eta_s}")


# W&B groups charts into panels by the key's prefix; metrics.jsonl keeps the plain keys (tests,
# benchmarks and distca-report read them)
_PANELS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
           "eval_loss": "eval/loss", "eval_ppl": "eval/ppl"}
_PERF = ("tokens", "tokens_per_s", "tflops_per_gpu", "mfu", "max_mem_gib", "step_time_s", "data_wait_s")


def wandb_key(key: str) -> str:
    """train/loss, eval/loss, perf/tokens_per_s, perf/data_wait_s, cad/imbalance_after,
    pipeline/bubble, data/tokens_<source>, ..."""
    if key in _PANELS:
        return _PANELS[key]
    if key in _PERF:
        return f"perf/{key}"
    for prefix, panel in (("cad_", "cad"), ("pp_", "pipeline"), ("eval_", "eval"), ("data_", "data")):
        if key.startswith(prefix):
            return f"{panel}/{key[len(prefix):]}"
    return f"other/{key}"


def wandb_panels(m: dict) -> dict:
    """Chartable values by panel key: a list (loss per position bucket) or a dict (passkey
    accuracy per length) becomes one chart per entry; deeper structures (the passkey grid)
    stay in metrics.jsonl only."""
    out = {}
    for k, v in m.items():
        if k == "step" or v is None:
            continue
        if isinstance(v, (list, dict)):
            items = enumerate(v) if isinstance(v, list) else v.items()
            out.update({f"{wandb_key(k)}/{i}": x for i, x in items if isinstance(x, (int, float))})
        else:
            out[wandb_key(k)] = v
    return out


class MetricsLogger:
    def __init__(self, run_dir: str, cfg_dict: dict, lcfg, total_steps: int, enabled: bool,
                 log_every: int = 1, start_step: int = 0):
        self.enabled = enabled
        self.total, self.every, self.start = total_steps, max(1, log_every), start_step
        self._t0 = time.perf_counter()
        self._wandb = None
        self._progress = None
        self.wandb_where = None  # the run's URL, or its offline folder, for the banner
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        if lcfg.wandb and os.environ.get("WANDB_MODE", "") != "disabled":
            # never a prompt or a hang: offline (and said so) without credentials or a server
            started = start_wandb(lcfg, run_dir, cfg_dict, warn=lambda msg: print(f"distca: warning: {msg}",
                                                                                  file=sys.stderr, flush=True))
            self._wandb, self.wandb_where = started.run, started.where
        if lcfg.progress:
            self._start_progress()

    def _start_progress(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        console = Console(file=sys.__stderr__)  # the terminal itself: bar codes stay out of train.log
        if not console.is_terminal:
            return  # plain lines instead (CI logs, files)
        # the step line is <= 80 columns; a bar only where there is room for it beside the line
        bar = [BarColumn(bar_width=20)] if console.width >= 100 else []
        self._progress = Progress(*bar, TextColumn("step"), MofNCompleteColumn(),
                                  TextColumn("{task.fields[stats]}"), console=console, transient=True)
        self._task = self._progress.add_task("train", total=self.total, completed=self.start, stats="")
        self._progress.start()
        keep_mirroring()  # what is printed above the bar still reaches train.log

    def log(self, m: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(m) + "\n")
        step = m["step"]
        due = step % self.every == 0 or step == self.total or step == self.start + 1
        if self._wandb is not None and (due or any(k.startswith("eval_") for k in m)):  # never skip an evaluation
            self._wandb.log(wandb_panels(m), step=step)
        if not due:
            return
        elapsed = time.perf_counter() - self._t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else None
        line = step_line(m, self.total, elapsed, eta)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stats=re.sub(r"^step\s+\d+/\d+ ", "", line))
            log_only(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._wandb is not None:
            self._wandb.finish()
        self._file.close()
