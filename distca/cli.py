"""The command line: `distca-train` (and `python -m distca.train`, torchrun's `-m distca.train`)
composes the config with Hydra, runs `distca.train.train`, and turns every way a run ends
into one line and an exit status a scheduler can read: 0 done, 2 config error, 3 too many
bad steps, 124 hang (the watchdog's), 130 / 143 stopped by Ctrl-C / SIGTERM after saving,
1 anything else."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import NoReturn

import torch.distributed as dist

from distca.checkpoint.store import CheckpointWriteError
from distca.config.errors import ConfigError
from distca.lifecycle import run_lock
from distca.lifecycle.run_dir import base_run_dir, discard_unused, hydra_overrides
from distca.lifecycle.step_guard import TrainingFailure
from distca.lifecycle.stopping import Stopped
from distca.observe.console import say


def _report_to_torchrun(e: Exception, what: str) -> None:
    """Give torchrun the root cause to print last (instead of `error_file: <N/A>`)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        with open(path, "w") as f:
            json.dump({"message": {"message": f"{type(e).__name__}: {e}", "extraInfo": {
                "py_callstack": f"{what}: {e}", "timestamp": str(int(time.time()))}}}, f)


def _lost_peer(e: RuntimeError) -> bool:
    """A collective failed because another rank is gone or stuck (gloo, NCCL, the store)."""
    text = str(e)
    return any(k in text for k in ("Connection closed by peer", "Connection reset by peer",
                                   "NCCL communicator was aborted", "Watchdog caught collective operation timeout",
                                   "Broken pipe", "recvBytes", "Socket Timeout"))


def _config_error(e: Exception, rank: int) -> NoReturn:
    """Every rank found the same problem before any collective: rank 0 says it once, no
    traceback, exit 2; the other ranks leave quietly so torchrun lists one failure."""
    if rank == 0:
        print(f"distca: config error: {e}", file=sys.stderr, flush=True)
        _report_to_torchrun(e, "config error (rank 0 printed it above)")
    sys.exit(2 if rank == 0 or "TORCHELASTIC_RUN_ID" not in os.environ else 0)


def _warn(msg: str, run_dir: str) -> None:
    """On the console and in the run's train.log (the lock is taken before the log opens)."""
    print(msg, file=sys.stderr, flush=True)
    with contextlib.suppress(OSError), open(os.path.join(run_dir, "train.log"), "a") as f:
        f.write(msg + "\n")


def main() -> None:
    if {"--help", "-h"} & set(sys.argv[1:]):  # help: every field, described from the schema
        from distca.config.help import print_help
        return print_help(sys.argv[1:])
    import hydra
    from torch.distributed.elastic.multiprocessing.errors import record

    from distca.config.compose import check_composes, register_schema
    from distca.train import train

    register_schema()
    rank = int(os.environ.get("RANK", "0"))
    given = sys.argv[1:]
    multirun = any(a in ("-m", "--multirun") for a in given)
    try:  # Hydra's own composition errors are multi-line and exit 1: ours first, before any file
        check_composes([a for a in given if ("=" in a or a.startswith("~")) and not a.startswith("-")
                        and not a.lstrip("+~").startswith("hydra")], multirun)
    except ConfigError as e:
        _config_error(e, rank)
    base = base_run_dir(given)
    lock = None
    if rank == 0:  # one run per run dir, taken before Hydra writes into it
        try:
            lock = run_lock.acquire(base, warn=lambda msg: _warn(msg, base))
        except ValueError as e:
            _config_error(e, rank)
    argv = [a for a in given if not a.lstrip("+").startswith("run_dir=")]
    argv += hydra_overrides(given, rank, base)

    @hydra.main(config_path="pkg://configs", config_name="train", version_base="1.3")
    def _app(cfg):
        try:
            train(cfg)
        except ConfigError as e:
            if rank == 0:  # a run dir holding only Hydra's files goes (runs/ stays free of them)
                discard_unused(cfg.run_dir, lock)
            _config_error(e, rank)
        except Stopped as e:
            if rank == 0:  # plain torchrun reports the stop as a failure: say what it was
                _report_to_torchrun(e, "not a crash, every rank saved a checkpoint")
            sys.exit(e.exit_code)  # 143 (SIGTERM) / 130 (Ctrl-C): stopped, checkpoint saved
        except (TrainingFailure, CheckpointWriteError) as e:
            # a failure with its own explanation: said once, no traceback, a readable status
            say(f"error: {e}", rank == 0 or isinstance(e, CheckpointWriteError))
            if rank == 0:
                _report_to_torchrun(e, "training stopped (rank 0 printed why above)")
            sys.exit(e.exit_code)
        except RuntimeError as e:
            if not _lost_peer(e):
                raise
            # a peer died (or hangs): this rank cannot go on; one line, no traceback, and the
            # launcher (torchrun --max-restarts) restarts the job from its last checkpoint
            say(f"rank {rank} lost a peer and stops ({str(e).splitlines()[0][:200]}); the launcher's "
                "log names the rank that failed first", True)
            sys.exit(1)
        except KeyboardInterrupt:  # a Ctrl-C before the stop handler was in place (start-up)
            say("interrupted by Ctrl-C during start-up (nothing saved)", rank == 0)
            sys.exit(130)

    sys.argv = [sys.argv[0]] + argv
    try:
        record(_app)()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        run_lock.release_all()


if __name__ == "__main__":
    main()
