"""A resumed run continues data, optimizer and RNG so its losses equal an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distca.train import train
from tests.distributed_utils import run_distributed
from tests.train_utils import TINY, losses, mixed_corpus, rewind, tiny_cfg


def _resume(rank, world, tmp, zero):
    import torch.distributed as dist
    full = losses(train(tiny_cfg(f"{tmp}/full", "train.steps=8", f"parallel.zero_stage={zero}",
                                 "checkpoint.every=4", f"checkpoint.dir={tmp}/ckpt")))
    # pretend the run died after step 4: point `latest` back there and start again
    if rank == 0:
        rewind(f"{tmp}/ckpt", 4)
    dist.barrier()
    resumed = losses(train(tiny_cfg(f"{tmp}/resumed", "train.steps=8", f"parallel.zero_stage={zero}",
                                    "checkpoint.every=4", f"checkpoint.dir={tmp}/ckpt")))
    assert resumed == full[4:], (zero, full, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [0, 2])
def test_resume_equals_uninterrupted(tmp_path, zero):
    run_distributed(_resume, 2, str(tmp_path), zero)


def _resume_cp(rank, world, tmp, data):
    """Context parallelism (ring, CAD) with checkpointing on: bitwise equal after resume."""
    import torch.distributed as dist
    for algo in ("ring", "cad"):
        common = ["train.steps=8", "train.dtype=fp32", "parallel.cp=2", f"parallel.cp_algo={algo}",
                  "model.recompute=full", "checkpoint.every=4",
                  f"checkpoint.dir={tmp}/{algo}_ckpt", *data]
        full = train(tiny_cfg(f"{tmp}/{algo}_full", *common))
        if rank == 0:
            rewind(f"{tmp}/{algo}_ckpt", 4)
        dist.barrier()
        resumed = train(tiny_cfg(f"{tmp}/{algo}_resumed", *common))
        assert losses(resumed) == losses(full)[4:], (algo, losses(full), losses(resumed))
        if algo == "cad":  # the resumed run plans the same steps: same balance, same moves
            keys = ("cad_imbalance_after", "cad_moved_work", "cad_bytes")
            assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in full[4:]]


@pytest.mark.slow
def test_resume_with_context_parallelism_equals_uninterrupted(tmp_path):
    run_distributed(_resume_cp, 2, str(tmp_path), mixed_corpus(tmp_path / "docs.jsonl"))


def test_resume_single_process(tmp_path):
    full = losses(train(tiny_cfg(tmp_path / "a", "train.steps=6", "checkpoint.every=3",
                                 f"checkpoint.dir={tmp_path}/ck")))
    rewind(tmp_path / "ck", 3)
    resumed = losses(train(tiny_cfg(tmp_path / "b", "train.steps=6", f"checkpoint.dir={tmp_path}/ck")))
    assert resumed == full[3:]


@pytest.mark.slow
def test_sigterm_saves_and_resume_matches(tmp_path):
    """torchrun job killed with SIGTERM mid-run checkpoints; resuming reproduces the losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    args = [*TINY, "train.steps=40", "train.log_every=1"]

    def launch(run_dir, ckpt_dir):
        return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                 "--nproc_per_node", "2", "-m", "distca.train", *args,
                                 f"run_dir={run_dir}", f"checkpoint.dir={ckpt_dir}"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read(run_dir):
        import json
        p = Path(run_dir) / "metrics.jsonl"
        return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []

    ref = launch(tmp_path / "ref", tmp_path / "ref_ck")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    proc = launch(tmp_path / "cut", tmp_path / "cut_ck")
    deadline = time.time() + 300
    while len(read(tmp_path / "cut")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=300)
    saved = int((tmp_path / "cut_ck" / "latest").read_text())
    assert 3 <= saved < 40
    again = launch(tmp_path / "cut", tmp_path / "cut_ck")
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    ref_losses = {r["step"]: r["loss"] for r in read(tmp_path / "ref")}
    rows = read(tmp_path / "cut")
    got = {r["step"]: r["loss"] for r in rows}  # later rows (the resumed run) win
    assert sorted(got) == list(range(1, 41))
    assert all(got[s] == ref_losses[s] for s in got), [(s, got[s], ref_losses[s]) for s in got if got[s] != ref_losses[s]]
