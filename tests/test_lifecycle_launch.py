"""Launchers and the README's examples on a CPU machine (issue 20, items 5 and 8)."""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distca.observe.console import cpu_run_warning
from distca.lifecycle.process_group import cpu_threads, cpu_threads_source

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def _dry(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "launch.local", "--dry-run", *args], cwd=ROOT,
                       env=env or ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU inference of the process count")
def test_local_launcher_infers_processes_from_the_degrees():
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    out = _dry("experiment=tiny", "parallel.cp=2", "parallel.cp_algo=ring", env=env)
    assert "--nproc_per_node=2" in out and re.search(r"OMP_NUM_THREADS=\d+ ", out), out
    assert "--nproc_per_node=8" in _dry("parallel.dp=2", "parallel.tp=2", "parallel.cp=2", "parallel.cp_algo=ring")
    assert "--nproc_per_node=3" in _dry("--nproc", "3", "experiment=tiny")
    assert "--nproc_per_node=1" in _dry("experiment=tiny")


def test_readme_launch_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("python -m launch.local"))
    cmd = line.split("#")[0].split()[1:]  # drop "python" and the comment
    r = subprocess.run([sys.executable, *cmd, "train.steps=2", "data.seq_len=64", f"run_dir={tmp_path}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert "Traceback" not in r.stderr and "FutureWarning" not in r.stderr, r.stderr[-3000:]


def test_multinode_run_id(tmp_path):
    """Without RUN_ID every job gets a new run dir (no run_dir passed: rank 0 names one); with
    RUN_ID the run dir is runs/$RUN_ID, so a requeued job resumes it."""
    stub = tmp_path / "python3"
    stub.write_text("#!/bin/sh\necho \"$@\"\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "NNODES": "2", "MASTER_ADDR": "n0",
           "NPROC_PER_NODE": "4", "OMP_NUM_THREADS": "1"}
    run = lambda **kw: subprocess.run(["bash", "launch/multinode.sh", "model=8b"], cwd=ROOT, env={**env, **kw},  # noqa: E731
                                      capture_output=True, text=True).stdout
    out = run()
    assert "run_dir=" not in out and "--rdzv_id distca-n0-29500" in out, out
    out = run(RUN_ID="myrun")
    assert "run_dir=runs/myrun model=8b" in out and "--rdzv_id myrun" in out, out


def test_cpu_threads_are_the_available_cores_not_a_load_guess(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), float(cores), float(cores)), raising=False)
    assert cpu_threads(1) == cores  # a busy machine's cores are still this process's to use
    assert cpu_threads(2) == max(1, cores // 2) and cpu_threads(10 ** 6) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})  # a scheduler's share
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads(2) == 3
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads_source() == "6 cores available / 2 process(es) on this host"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert cpu_threads_source() == "OMP_NUM_THREADS=5"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU ranks")
def test_torchrun_wrapper_gives_cpu_ranks_their_share(monkeypatch):
    from launch.torchrun import _cpu_threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert (_cpu_threads("2"), _cpu_threads("3"), _cpu_threads("gpu")) == ("4", "2", "1")


def test_cpu_threads_and_large_model_warning():
    cpu = torch.device("cpu")
    assert cpu_run_warning(cpu, 6 * 1e6 * 1024, 1) is None  # tiny: seconds
    msg = cpu_run_warning(cpu, 6 * 1.2e9 * 16384, 1)  # 1B model, 16K tokens per step
    assert msg and "GPU-sized" in msg and "per step" in msg
    assert cpu_run_warning(torch.device("cuda", 0), 1e30, 1) is None


def test_first_zero_run_announces_the_op_build(tmp_path, monkeypatch, capsys):
    from distca.startup import announce_deepspeed_build as _announce_deepspeed_build
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    _announce_deepspeed_build(2, loud=True)
    assert "DeepSpeed may compile its C++ ops now" in capsys.readouterr().err
    (tmp_path / "py311_cpu").mkdir()  # built once: cached
    _announce_deepspeed_build(2, loud=True)
    _announce_deepspeed_build(0, loud=True)
    assert capsys.readouterr().err == ""
