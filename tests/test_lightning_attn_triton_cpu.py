"""Runs `test_lightning_attn_interpret.py` in a subprocess with TRITON_INTERPRET=1.

Triton decides interpreter-or-GPU when it is first imported, and the rest of the suite imports
it without the variable, so the interpreter tests need a fresh process.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                    reason="already interpreting: the tests run directly in this process")
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         str(ROOT / "tests" / "test_lightning_attn_interpret.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.split("\n")[-2], tail
