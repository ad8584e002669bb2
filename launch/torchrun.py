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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, minus its banner
    # the agent's warnings restate what the ranks print ("Received 15 death signal", "Sending
    # process N closing signal"); its errors still show
    os.environ.setdefault("LOGLEVEL", "ERROR")  # read when torch's loggers are made: set it first
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in ("torch.distributed.elastic", "torch.distributed.elastic.multiprocessing.api"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
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
