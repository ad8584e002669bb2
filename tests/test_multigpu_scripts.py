"""The multi-GPU benchmark scripts (benchmarks/multigpu_*.py, issue 22) still run: each in its
CPU dry-run mode (gloo, tiny shapes) at world size 1 and 2, so they cannot rot before a GPU
session; the correctness one at world 2 really compares (attention in bf16 against fp32,
training curves against one process) and must pass. And the payload-cut exchange the overlap
script injects into CAD (benchmarks/cad_cut_exchange.py) sends one element per peer where the
product's exchange sends the payload.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from benchmarks.cad_cut_exchange import CutExchange
from benchmarks.multigpu_common import ROOT, child_env, torchrun
from parallel import comm
from parallel.cad.dispatch import Exchange
from tests.distributed_utils import run_distributed


def _run(args: list[str], nproc: int, timeout: int = 300) -> None:
    cmd = torchrun(nproc, args) if nproc > 1 else [sys.executable, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]


def _exchange(rank, world, cut):
    send = torch.arange(12.0).reshape(6, 2) + 100 * rank + 1  # 2 rows to rank 0, 4 to rank 1
    recv_splits = [2, 2] if rank == 0 else [4, 4]
    sent = []
    with comm.observe(lambda e: sent.append(e) if e.op == "all_to_all_single" else None):
        kind = CutExchange if cut else Exchange
        recv = kind(send, [2, 4], recv_splits, dist.group.WORLD, async_op=True).wait()
    (event,) = sent
    assert recv.shape == (sum(recv_splits), 2)  # the payload's shape either way
    if cut:  # one element per peer on the wire, zeros back
        assert event.splits == [1, 1] and event.send.numel() == world
        assert recv.abs().sum() == 0
    else:
        assert event.splits == [2, 4] and event.send.numel() == 12
        lo, hi = (0, 2) if rank == 0 else (2, 6)
        want = torch.cat([torch.arange(12.0).reshape(6, 2)[lo:hi] + 100 * r + 1 for r in range(2)])
        assert torch.equal(recv, want)


@pytest.mark.parametrize("cut", [False, True])
def test_cut_payload_sends_one_element_per_peer(cut):
    run_distributed(_exchange, 2, cut)


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_correctness_script_dry_run(tmp_path, nproc):
    out = tmp_path / "c.json"
    only = ["--only", "dp=N", "cp=N ring", "cad overlap=halves resend", "tp=2", "pp=2", "LASP-2"]
    _run(["benchmarks/multigpu_correctness.py", "--dry-run", "--out", str(out),
          "--workdir", str(tmp_path / "w"), *only], nproc)
    d = json.loads(out.read_text())
    assert d["world_size"] == nproc and d["failed"] == [] and d["skipped"]
    if nproc == 2:  # really compared: attention cases and training curves, all passing
        levels = {r["level"] for r in d["results"]}
        assert levels == {"attention", "training"} and all(r["pass"] for r in d["results"])
        assert any(r["layout"].startswith("cad") for r in d["results"])


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_overlap_script_dry_run(tmp_path, nproc):
    out = tmp_path / "o.json"
    _run(["benchmarks/multigpu_overlap.py", "--dry-run", "--out", str(out), "--workdir", str(tmp_path / "w")], nproc)
    d = json.loads(out.read_text())
    if nproc == 2:
        cad = next(r for r in d["attention"] if r["algo"] == "cad")
        assert cad["t_cut_s"] > 0 and 0 <= cad["hidden_fraction"] <= 1
        modes = d["cad_in_training"]
        assert [r["overlap"] for r in modes] == ["none", "halves", "nanobatch", "auto"], modes
        assert all(r["t_full_s"] > 0 and r["t_cut_s"] > 0 for r in modes), modes
        assert modes[-1]["cad_overlap"] in (0.0, 1.0, 2.0), modes  # the mode auto chose
        assert modes[-1]["auto_over_best_mode"] > 0 and modes[0]["link_gbps_measured"] > 0, modes
        assert d["pipeline"]["bubble_theory"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_throughput_script_dry_run(tmp_path, nproc):
    out = tmp_path / "t.json"
    _run([str(Path("benchmarks/multigpu_throughput.py")), "--dry-run", "--nproc", str(nproc), "--out", str(out),
          "--models", "8b", "--lengths", "512k", "--mixes", "pretrain", "--algos", "ring", "cad",
          "--workdir", str(tmp_path / "w")], 1)
    d = json.loads(out.read_text())
    assert [c["ok"] for c in d["cases"]] == [True, True], d["cases"]
    assert d["goal"][0]["ratio"] is not None


@pytest.mark.slow
def test_one_gpu_overlap_script_smoke(tmp_path):
    """benchmarks/cad_overlap_one_gpu.py (the one-GPU overhead of every overlap mode, issue 32)
    in its CPU smoke mode: a row for every mode, the overhead over local attention, the mode
    each ran, and a profile whose groups hold CAD's own ops where the exchange path is forced."""
    out = tmp_path / "one.json"
    _run(["benchmarks/cad_overlap_one_gpu.py", "--smoke", "--out", str(out)], 1, timeout=600)
    d = json.loads(out.read_text())
    modes = ["local", "none", "halves", "nanobatch", "auto", "none+x", "halves+x", "nanobatch+x"]
    assert [r["attention"] for r in d["rows"]] == modes and not d["skipped"], d
    assert all(r["step_s"] > 0 for r in d["rows"]), d["rows"]
    # one process moves nothing: in place (none) unless nano-batches or a forced exchange split it
    ran = {r["attention"]: r.get("cad_overlap") for r in d["rows"]}
    assert ran == {"local": None, "none": 0, "halves": 0, "nanobatch": 2, "auto": 0, "none+x": 0,
                   "halves+x": 1, "nanobatch+x": 2}, ran
    assert {o["attention"] for o in d["overhead"]} == set(modes[1:])
    profile = json.loads((tmp_path / d["profile_file"]).read_text())["cases"]["256 full"]
    for mode, p in profile.items():
        assert abs(sum(g["share"] for g in p["groups"].values()) - 1) < 1e-6 and p["top_ops"], (mode, p)
    assert profile["halves+x"]["groups"]["cad (parallel/cad)"]["share"] > 0
    assert "cad (parallel/cad)" not in profile["local"]["groups"]
