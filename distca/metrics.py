"""One interface for step metrics: metrics.jsonl, a console progress bar, and W&B.

Only rank 0 logs. wandb is imported lazily so runs without it never pay for the import.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: str, cfg_dict: dict, lcfg, total_steps: int, enabled: bool):
        self.enabled = enabled
        self.total = total_steps
        self._wandb = None
        self._progress = None
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a", buffering=1)
        if lcfg.wandb and os.environ.get("WANDB_MODE", "") != "disabled":
            import wandb  # lazy: heavy import, optional service

            self._wandb = wandb.init(project=lcfg.project, entity=lcfg.entity, name=lcfg.name,
                                     dir=run_dir, config=cfg_dict,
                                     mode=os.environ.get("WANDB_MODE", lcfg.mode))
        if lcfg.progress:
            self._start_progress()

    def _start_progress(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=sys.stderr)
        if not console.is_terminal:
            return  # plain one line per step instead (CI logs, files)
        self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                                  console=console)
        self._task = self._progress.add_task("train", total=self.total, stats="")
        self._progress.start()

    def log(self, m: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(m) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in m.items() if k != "step"}, step=m["step"])
        stats = (f"loss {m['loss']:.4f}  {m['tokens_per_s']:,.0f} tok/s  "
                 f"{m['tflops_per_gpu']:.2f} TFLOP/s  mfu {m['mfu']:.1%}  mem {m['max_mem_gib']:.2f} GiB")
        if self._progress is not None:
            self._progress.update(self._task, completed=m["step"], stats=stats)
        else:
            print(f"step {m['step']}/{self.total}  {stats}  lr {m['lr']:.2e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self._wandb is not None:
            self._wandb.finish()
        self._file.close()
