"""Runs `test_flash_attn_interpreter.py` in a fresh process.

Training tests earlier in the suite leave Triton state behind in the pytest process that
makes interpreted kernels fail ("Cannot call @triton.jit'd outside of the scope of a kernel"),
so the interpreter tests get a process of their own, as the lightning kernel's do.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("DISTCA_FRESH_PROCESS") == "1", reason="already in the fresh process")
def test_flash_attn_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, DISTCA_FRESH_PROCESS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(ROOT / "tests" / "test_flash_attn_interpreter.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.strip().split("\n")[-1], tail
