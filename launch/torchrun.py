"""torchrun without the launcher's tracebacks: `python -m launch.torchrun [torchrun args]`.

torchrun ends a stopped job with a `SignalException` traceback and a failed one with a
`ChildFailedError` traceback after the ranks' own messages. This runs the same launcher
(`torch.distributed.run.run`) and turns both into one line and the ranks' exit code, so the
last thing on screen is the cause: 143 / 130 for a stop (every rank saved), the failing
rank's code otherwise. Used by launch/local.py and launch/multinode.sh.
"""
from __future__ import annotations

import logging
import os
import sys


def _cpu_threads(nproc_per_node: str) -> str:
    """OMP_NUM_THREADS for the ranks when unset: torchrun's own 1 on a GPU machine; on a CPU
    one, the cores available shared by this node's ranks (as launch/local.py gives them)."""
    import torch

    from distca.lifecycle.process_group import cpu_threads
    if torch.cuda.is_available() or not nproc_per_node.isdigit():
        return "1"
    return str(cpu_threads(int(nproc_per_node)))


def main(argv: list[str] | None = None) -> int:
    # the agent's warnings restate what the ranks print ("Received 15 death signal", "Sending
    # process N closing signal"); its errors still show
    os.environ.setdefault("LOGLEVEL", "ERROR")  # read when torch's loggers are made: set it first
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if "OMP_NUM_THREADS" not in os.environ:  # set here, torchrun would set 1 with a banner
        os.environ["OMP_NUM_THREADS"] = _cpu_threads(str(args.nproc_per_node))
    try:
        run(args)
    except SignalException as e:  # the launcher itself was signalled; it forwarded the signal
        print(f"distca: launcher stopped by signal {e.sigval.name}; ranks finished their step and "
              "saved (see above)", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        codes = {f.exitcode for f in e.failures.values()}
        if codes <= {130, 143}:  # ranks stopped by a signal, checkpoint saved
            return max(codes)
        what = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"distca: rank {rank} failed ({what}); its message is above", file=sys.stderr, flush=True)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
