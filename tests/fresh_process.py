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


def run_test_files_in_fresh_process(names: list[str], **env_vars: str) -> None:
    """Run tests/<name> for every name with env_vars set; fail with the output's tail unless
    every test passed (a skip there means the process did not take the path it exists for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         *(str(ROOT / "tests" / n) for n in names)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.strip().split("\n")[-1], tail
