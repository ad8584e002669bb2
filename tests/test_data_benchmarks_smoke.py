"""The data benchmarks run end to end on the CPU in their smoke modes (results go to a temporary
file, never benchmarks/results): the per-rank loader at 8/64/512 simulated ranks, distca-tokenize
against encode_batch, balanced packing with its CPU run, and the GPU data_wait_s script."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}


def run(script, *args, tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, f"benchmarks/{script}", *args, "--out", str(out)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_loader_scaling_smoke(tmp_path):
    rec = run("data_loader_scaling.py", "--quick", tmp_path=tmp_path)
    assert [r["ranks"] for r in rec["layouts"]] == [8, 64, 512]
    assert [r["local_tokens"] for r in rec["layouts"]] == [524288, 65536, 32768]  # only the rank's share
    assert rec["provenance"]["machine"]["cores"] >= 1


@pytest.mark.slow
def test_tokenize_throughput_smoke(tmp_path):
    rec = run("tokenize_throughput.py", "--quick", tmp_path=tmp_path)
    (r,) = rec["runs"]
    assert r["cores"] == 1 and r["distca_tokenize"]["tokens_per_s"] > 0 and r["encode_batch"]["tokens_per_s"] > 0
    assert rec["corpus"]["tokens"] > 0


@pytest.mark.slow
def test_packing_balance_smoke(tmp_path):
    rec = run("packing_balance.py", "--quick", "--cpu-run", tmp_path=tmp_path)
    assert {r["dist"] for r in rec["results"]} == {"pretrain", "longctx"}
    assert all(r["balanced"]["work_ratio"] == pytest.approx(1.0, abs=0.01) for r in rec["results"])
    cpu = rec["cpu_run"]
    assert cpu["balanced"]["losses"][0] == pytest.approx(cpu["sequential"]["losses"][0], rel=1e-4)  # same pieces


@pytest.mark.slow
def test_data_wait_smoke(tmp_path):
    rec = run("data_wait.py", "--smoke", tmp_path=tmp_path)
    assert [r["prefetch"] for r in rec["runs"]] == [True, False]
    assert all(r["steps"] == 4 and r["data_wait_s_median"] >= 0 for r in rec["runs"])
