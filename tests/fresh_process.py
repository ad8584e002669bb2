"""Run test files in a fresh pytest process started with given environment variables.

The Triton interpreter tests need one: triton builds its own `@triton.jit` helpers (tl.zeros,
tl.cdiv, ...) when it is first imported, as interpreter functions only if TRITON_INTERPRET=1
is set by then, and the rest of the suite imports triton long before. Our own kernel files
are built per mode at any time (distca_kernels/triton_loader.py); triton's helpers are not.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The Triton interpreter tests of every kernel op: tests/test_triton_interpreter.py runs them
# in one fresh TRITON_INTERPRET=1 process; conftest.py keeps them out of other sessions.
INTERPRETER_TESTS = ["test_flash_attn_interpreter.py", "test_lightning_attn_interpret.py",
                     "test_linear_ce_interpret.py", "test_rms_norm_interpret.py",
                     "test_swiglu_interpret.py", "test_rope_interpret.py"]


def run_test_files_in_fresh_process(names: list[str], **env_vars: str) -> str:
    """Run tests/<name> for every name with env_vars set; fail with the output's tail unless
    every test passed (a skip there means the process did not take the path it exists for).
    Returns that session's summary line (e.g. "147 passed in 300.1s")."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         *(str(ROOT / "tests" / n) for n in names)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    last = proc.stdout.strip().split("\n")[-1].strip("= ")
    assert " passed" in last and " skipped" not in last, tail
    return last
