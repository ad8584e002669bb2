"""What rank 0 tells the user: the start-up banner, the end summary, and train.log.

`mirror(run_dir)` copies everything this process writes to stdout / stderr into
`<run_dir>/train.log` (ours, warnings, the per-step lines), so the log holds what the user
saw. The rich progress bar writes to the real terminal only (escape codes stay out of the
file); the per-step lines always reach the file, and so does what is printed while the bar
shows (`keep_mirroring`).
"""
from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
import warnings
from pathlib import Path

from distca.lifecycle.process_group import cpu_threads_source


class _Tee:
    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, s):
        self._log.write(s)
        return self._stream.write(s)

    def flush(self):
        self._log.flush()
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding ... of the real stream
        return getattr(self._stream, name)


_log_file = None


def log_only(line: str) -> None:
    """Into train.log but not onto the screen (what the progress bar shows instead)."""
    if _log_file is not None:
        _log_file.write(line + "\n")


@contextlib.contextmanager
def mirror(run_dir: str, enabled: bool):
    """Tee stdout and stderr into <run_dir>/train.log (appending: a resumed run adds to it)."""
    if not enabled:
        yield
        return
    global _log_file
    log = open(Path(run_dir) / "train.log", "a", buffering=1)
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    _log_file = log
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old
        _log_file = None
        log.close()


def keep_mirroring() -> None:
    """Call right after a rich live display starts: it swaps sys.stdout / sys.stderr for proxies
    that print above the bar through its console, past `mirror`'s tee, so the banner, warnings
    and anything else printed while the bar shows never reached train.log. Tee the proxies
    too; the display restores the tees it replaced when it stops."""
    if _log_file is None:
        return
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout, _log_file)
    if not isinstance(sys.stderr, _Tee):
        sys.stderr = _Tee(sys.stderr, _log_file)


def say(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(f"distca: {msg}", file=sys.stderr, flush=True)


def quiet_known_warnings() -> None:
    """Warnings we know are noise, silenced by exact message (anything new still shows)."""
    # DDP(broadcast_buffers=False) is deliberate (parallel/data_parallel.py): the replacement
    # still syncs buffers at init, which the warning itself says to avoid until torch has one
    warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning)


def git_commit() -> str:
    """The commit the code runs from (+ '-dirty' with local edits), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]  # the repository
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("-dirty" if dirty else "")) if head else "unknown"


def versions() -> dict:
    """Versions of what this run imported (deepspeed only when ZeRO loaded it: importing it costs
    seconds)."""
    import torch
    out = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name in ("distca", "triton", "deepspeed", "wandb"):
        if (mod := sys.modules.get(name)) is not None and getattr(mod, "__version__", None):
            out[name] = str(mod.__version__)
    return out


def human(n: float) -> str:
    for unit, div in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def clock(seconds: float) -> str:
    s = int(seconds)
    if s >= 100 * 3600:  # keeps the step line inside 80 columns
        return f"{s // 86400}d{s // 3600 % 24:02d}h"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def banner(facts: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in facts)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in facts)


def cpu_step_seconds(device, flops_per_step: float, world: int) -> float | None:
    """A CPU run's best-case seconds per step (None on a GPU): ~50 GFLOP/s per thread, `world`
    processes of this process's threads, optimistic for fp32 on a CPU. flops_per_step:
    forward + backward of the whole step (distca/observe/flops.py)."""
    if device.type != "cpu":
        return None
    import torch
    return flops_per_step / (5e10 * torch.get_num_threads() * max(1, world))


def cpu_threads_summary(world: int) -> str:
    import torch
    return f"{torch.get_num_threads()} thread(s) x {world} process(es)"


def cpu_run_warning(device, flops_per_step: float, world: int) -> str | None:
    """A CPU run whose steps take minutes: say so before step 1, with an estimate."""
    seconds = cpu_step_seconds(device, flops_per_step, world)
    if seconds is None or seconds < 60:
        return None
    return (f"this model needs about {human(flops_per_step)}FLOP per step: roughly {clock(seconds)} "
            f"per step on this CPU ({cpu_threads_summary(world)}) at best; it is a GPU-sized run "
            "(on a CPU try experiment=tiny)")


def start_banner(cfg, plan, device, run_dir, ckpt_dir, start, n_params, vocab, peak, wandb_where,
                 long_steps: str | None = None) -> str:
    """The facts a user needs before step 1 (rank 0)."""
    d, p, t, c = plan.dims, cfg.parallel, cfg.train, cfg.checkpoint
    import torch
    if device.type == "cuda":
        dev = f"{device} {torch.cuda.get_device_name(device)}" + (f", peak {peak:.0f} TFLOP/s" if peak else
                                                                 ", peak unknown (mfu n/a)")
    else:
        n = torch.get_num_threads()
        dev = f"cpu, {n} thread{'s' if n != 1 else ''} per process ({cpu_threads_source()}), mfu n/a"
    layout = f"{d.world_size} process(es): dp {d.dp} x tp {d.tp} x pp {d.pp} x cp {d.cp}"
    if d.cp > 1:
        layout += f" ({p.cp_algo}, {plan.layout})"
    if p.zero_stage:
        layout += f", ZeRO-{p.zero_stage}"
    saves = [f"every {c.every} steps"] if c.every else []
    saves += [f"every {c.every_minutes:g} min"] if c.every_minutes else []
    saves += ["at the end"] if c.save_final else []
    facts = [
        ("run dir", run_dir),
        ("start", start.message),
        ("model", f"{cfg.model.name}: {len(cfg.model.layers)} layers ({cfg.model.layers}), hidden "
                  f"{cfg.model.hidden}, {human(n_params)} parameters, vocab {vocab}"),
        *([("weights", f"{cfg.model.init_from} (its config.json's architecture replaces the model preset's; "
                        f"rope {cfg.model.rope_scaling}, theta {cfg.model.rope_theta:g})")]
          if cfg.model.init_from and start.load_dir is None else []),
        ("layout", layout),
        ("device", dev),
        ("data", f"{_data_sources(cfg.data)}, seq_len {cfg.data.seq_len}, {t.global_batch_size} samples "
                 f"({human(t.global_batch_size * cfg.data.seq_len)} tokens) per step"),
        ("steps", f"{t.steps} (lr {t.lr:g}, warmup {t.warmup_steps}, {t.dtype})"),
        ("checkpoints", f"{ckpt_dir}: {', '.join(saves) or 'only on stop'}"
                        + (f", keep {c.keep}" if c.keep else "")),
        ("logs", f"{run_dir}/metrics.jsonl, train.log (a line every {t.log_every} step(s))"),
        ("W&B", wandb_where or "off (logger=wandb to log)"),
        ("stop", f"Ctrl-C or SIGTERM saves and exits; continue with run_dir={run_dir}" if not long_steps else
                 f"Ctrl-C or SIGTERM stops at once without saving ({long_steps}); continue with run_dir={run_dir}"),
    ]
    return "distca: starting\n" + banner(facts)


def _data_sources(d) -> str:
    """The source, or the mix with its weights; the packing when not the default."""
    if d.mix:
        total = sum(e.weight for e in d.mix) or 1.0
        what = "mix " + " / ".join(f"{e.name or f'mix{i}'} {e.weight / total:.0%}" for i, e in enumerate(d.mix))
    else:
        what = str(d.source)
    return what + ("" if str(d.packing) == "sequential" else f", {d.packing} packing")


def end_summary(history, first_step, last_step, total, elapsed, run_dir, ckpt_dir, saved, signum) -> str:
    """What happened, once the loop is over (rank 0)."""
    import signal as _signal
    done = last_step - first_step
    if signum:
        how = f"stopped by {'SIGTERM' if signum == _signal.SIGTERM else 'Ctrl-C'} after step {last_step}/{total}"
    else:
        how = f"finished {total} steps"
    facts = [("steps", f"{done} this run ({first_step + 1}..{last_step}) in {clock(elapsed)}")]
    if history:
        rates = sorted(m["tokens_per_s"] for m in history)
        facts += [("loss", f"{history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}"),
                  ("tokens/s", f"{human(rates[len(rates) // 2])} (median)")]
    facts += [("checkpoint", f"step {saved} in {ckpt_dir}" if saved is not None else "none saved"),
              ("metrics", f"{run_dir}/metrics.jsonl")]
    if signum:
        facts.append(("continue", f"the same command with run_dir={run_dir}"))
    return f"distca: {how}\n" + banner(facts)
