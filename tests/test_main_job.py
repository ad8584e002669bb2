"""The issue's acceptance command: torchrun, 2 CPU processes, experiment=tiny; the loss falls."""
import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_torchrun_tiny_loss_falls(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "distca.train", "experiment=tiny", f"run_dir={tmp_path}"],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == 40
    first = rows[0]["loss"]
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert first > 5.0 and last < first - 2.0, (first, last)  # from ~ln(258) to well below
    assert (tmp_path / "config.yaml").exists() and (tmp_path / ".hydra").is_dir()


def test_local_launcher_runs_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "launch.local", "--nproc", "1", "experiment=tiny",
                        "train.steps=2", "data.seq_len=64", f"run_dir={tmp_path}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(open(tmp_path / "metrics.jsonl").readlines()) == 2


def test_launch_scripts_parse():
    for script in ("launch/multinode.sh", "launch/slurm.sbatch"):
        assert subprocess.run(["bash", "-n", script]).returncode == 0, script
    r = subprocess.run(["bash", "launch/multinode.sh"], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode != 0 and "NNODES" in r.stderr
