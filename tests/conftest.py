import atexit
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# tests import `tests.distributed_utils`; make the repo root importable without install quirks
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fresh_process import INTERPRETER_TESTS  # noqa: E402

# The Triton interpreter modules run only in a process started with TRITON_INTERPRET=1:
# tests/test_triton_interpreter.py starts one and reports their count. Collected here they
# could only be skipped, and the summary would show them as skipped tests.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else list(INTERPRETER_TESTS)

_fresh_summaries: list[str] = []


def pytest_runtest_logreport(report):
    """What the fresh-process tests ran (tests/fresh_process.py records it; with xdist the
    report comes from a worker, so it travels in user_properties)."""
    if report.when == "call":
        _fresh_summaries.extend(v for k, v in report.user_properties if k == "fresh_process_summary")


def pytest_terminal_summary(terminalreporter):
    for line in _fresh_summaries:
        terminalreporter.write_line(line)


# Triton's compiler (nanobind bindings) reports objects still alive when the interpreter
# exits: "nanobind: leaked N instances ..." and a list, printed after pytest's summary, so a
# green run looks failed. They are Triton's caches, not our leaks, and harmless; the tests
# that compile kernels cause them. This filters exactly those lines from what the test
# process prints after pytest is done (at exit); everything else still reaches stderr.
_LEAK_FILTER = r"""
import sys
skip = False
for line in sys.stdin:
    if line.startswith("nanobind: "):
        skip = True
    elif skip and (line.startswith(" - ") or line.startswith("See https://nanobind")):
        pass
    else:
        skip = False
        sys.stdout.write(line)
        sys.stdout.flush()
"""


def _filter_exit_output() -> None:
    """At exit (after pytest restored the real stderr), send fd 2 through the filter."""
    if "triton" not in sys.modules:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        filt = subprocess.Popen([sys.executable, "-c", _LEAK_FILTER], stdin=subprocess.PIPE, stdout=os.dup(2),
                                stderr=subprocess.DEVNULL, close_fds=True)
    except OSError:
        return
    os.dup2(filt.stdin.fileno(), 2)  # the filter ends when this process closes its stderr


def pytest_configure(config):
    atexit.register(_filter_exit_output)  # atexit runs before the bindings report at shutdown
