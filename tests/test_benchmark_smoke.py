"""The on-ramp benchmarks run end to end on the CPU in their smoke modes (the GPU runs them at
size): the Hugging Face round trip (import, YaRN, train, passkey, export, logits against
transformers) and the start-up memory measurement."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_hf_roundtrip_smoke(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "rt.json"
    r = subprocess.run([sys.executable, "benchmarks/hf_roundtrip_gpu.py", "--smoke", "--steps", "2", "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["logits"]["within_bf16_tolerance"] and rec["logits"]["argmax_agreement_ours_transformers"] == 1.0
    assert len(rec["losses"]) == 2 and rec["passkey"]["eval_passkey_grid"]["lengths"] == [400]


@pytest.mark.slow
def test_startup_memory_smoke(tmp_path):
    out = tmp_path / "mem.json"
    r = subprocess.run([sys.executable, "benchmarks/startup_memory.py", "--model", "tiny", "--layers", "2", "--tp", "2",
                        "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert {row["mode"] for row in rec["rows"]} == {"before", "after"} and len(rec["rows"]) == 4
    # a tp=2 rank keeps half the model: the same bytes both ways
    kept = {row["mode"]: row["kept_parameters_mib"] for row in rec["rows"] if row["rank"] == 0}
    assert kept["before"] == kept["after"]
