"""The test command ends with pytest's own summary (issue 29): the Triton interpreter modules
are not collected (so not reported as skipped) in a session without TRITON_INTERPRET=1,
tests/test_triton_interpreter.py reports how many ran in its fresh process, and Triton's
exit-time "nanobind: leaked ..." lines are filtered from the test process's stderr (only
those lines)."""
import os
import subprocess
import sys
from pathlib import Path

from tests.fresh_process import INTERPRETER_TESTS

ROOT = Path(__file__).resolve().parent.parent


def _collect(*args, **env):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *args],
                       cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_interpreter_modules_are_collected_only_under_the_interpreter():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    names = [f"tests/{n}" for n in INTERPRETER_TESTS]
    main = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "tests/"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stdout
    assert "tests/test_triton_interpreter.py::test_kernels_under_the_interpreter" in main
    assert not [line for line in main.splitlines() if line.split("::")[0] in names], main[-3000:]
    fresh = _collect(*names, TRITON_INTERPRET="1")
    assert sum(line.split("::")[0] in names for line in fresh.splitlines()) > 50


_EXITING = r"""
import os, sys
sys.modules.setdefault("triton", type(sys)("triton"))  # the filter acts only where triton was used
from tests.conftest import _filter_exit_output
_filter_exit_output()
os.write(2, b"nanobind: leaked 4 instances!\n - leaked instance 0x1 of type \"triton._C.ir.attribute\"\n"
            b"nanobind: leaked 2 types!\n - leaked type \"MEM_SEMANTIC\"\n - ... skipped remainder\n"
            b"nanobind: this is likely caused by a reference counting issue in the binding code.\n"
            b"See https://nanobind.readthedocs.io/en/latest/refleaks.html\n"
            b"Exception ignored in: <something real>\n - a list item of a real message\n")
"""


def test_only_the_nanobind_leak_report_is_filtered_at_exit():
    r = subprocess.run([sys.executable, "-c", _EXITING], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "Exception ignored in: <something real>\n - a list item of a real message\n", r.stderr
