"""Run one test file in a fresh pytest process (Triton interpreter tests need one: see callers)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_test_file_in_fresh_process(name: str, **env_vars: str) -> None:
    """Run tests/<name> with env_vars set; fail with the output's tail unless every test passed
    (a skip there means the fresh process did not take the path it exists for)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_vars)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(ROOT / "tests" / name)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and " skipped" not in proc.stdout.strip().split("\n")[-1], tail
