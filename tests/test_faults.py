"""Chaos tests (issue 21): faults injected on purpose (distca/lifecycle/fault_injection.py, the
DISTCA_FAULTS variable) on a tiny model on CPU. Each checks that nothing was lost (the
loss trajectory equals an uninterrupted run's, exactly: fp32 on CPU) and that no process
outlives its bound (every subprocess runs under a timeout).

- a rank killed (SIGKILL) mid-run under `torchrun --max-restarts 1` (3 ranks): the job
  restarts and resumes its own run from the last complete checkpoint (rank 0 killed: the
  restart takes its own job's run-dir lock over);
- a rank killed while writing a checkpoint: the half-written step never becomes a
  checkpoint; the run resumes from the one before;
- the newest checkpoint truncated afterwards: named in a warning, skipped, the previous used;
- a NaN loss: the update is skipped and counted; too many in a row stop the run, keeping
  the last good checkpoint;
- a hang: the watchdog dumps every rank's stack to the run dir and exits 124;
- a full disk at a save: a clear error, the earlier checkpoints intact;
- a checkpoint of another engine format or model shape: refused before anything is built.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distca.checkpoint import store as ckpt
from distca.checkpoint.manifest import verify
from distca.lifecycle.step_guard import TooManyBadSteps
from distca.train import ConfigError, train
from tests.train_utils import losses, tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["experiment=tiny", "data.seq_len=64", "train.global_batch_size=3", "train.steps=6",
        "train.warmup_steps=2", "logger.progress=false", "checkpoint.every=2", "checkpoint.keep=0",
        "checkpoint.every_minutes=0", "eval.every=0"]


def _env(faults=""):
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "DISTCA_FAULTS": faults}


def _cli(cmd, faults="", timeout=240, cwd=ROOT):
    t0 = time.time()
    r = subprocess.run(cmd, cwd=cwd, env=_env(faults), capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr, time.time() - t0


def _losses(run_dir: Path) -> list[float]:
    """metrics.jsonl's loss per step; a step re-run after a restart: its last row."""
    by_step = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row["loss"]
    return [by_step[s] for s in sorted(by_step)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted trajectory, one process (layout-independent: the parity tests)."""
    run = tmp_path_factory.mktemp("clean")
    rc, out, _ = _cli([sys.executable, "-m", "distca.train", *ARGS, f"run_dir={run}"])
    assert rc == 0, out[-3000:]
    return _losses(run)


@pytest.fixture(scope="module")
def clean_three_ranks(tmp_path_factory):
    """The uninterrupted trajectory at the layout the restart test runs (3 data-parallel
    ranks): gradients summed across ranks round differently from one process's accumulation,
    so only the same layout is bitwise the same."""
    run = tmp_path_factory.mktemp("clean3")
    rc, out, _ = _cli([sys.executable, "-m", "launch.torchrun", "--standalone", "--nproc_per_node", "3",
                       "-m", "distca.train", *ARGS, f"run_dir={run}"], timeout=400)
    assert rc == 0, out[-3000:]
    return _losses(run)


@pytest.mark.slow
def test_killed_rank_restarts_and_resumes_exactly(tmp_path, clean, clean_three_ranks):
    # rank 0 of 3 (the one holding the run dir's lock) dies as step 4 starts (after step 2's
    # checkpoint and step 3); no run_dir: the restarted attempt must find its own run (the
    # job's run id), take its lock over as the same run (no "in use", no stale-lock warning)
    # and resume it
    rc, out, took = _cli([sys.executable, "-m", "launch.torchrun", "--standalone", "--nproc_per_node", "3",
                          "--max-restarts", "1", "-m", "distca.train", *ARGS],
                         faults="kill@0:4", timeout=400, cwd=tmp_path)
    assert rc == 0, out[-4000:]
    assert "resuming from step 2" in out and "lost a peer" in out, out[-4000:]
    assert "Traceback" not in out and "in use by another run" not in out and "taking it over" not in out, \
        out[-4000:]
    (run,) = [p for p in (tmp_path / "runs").glob("tiny-*")]  # both attempts: one run dir
    assert not (run / "distca.lock").exists()  # released at the end
    assert _losses(run) == clean_three_ranks
    assert _losses(run) == pytest.approx(clean, rel=1e-5)  # and the layout-free model (parity tests)


def test_kill_during_a_checkpoint_write_resumes_from_the_one_before(tmp_path, clean):
    cmd = [sys.executable, "-m", "distca.train", *ARGS, f"run_dir={tmp_path}"]
    rc, out, _ = _cli(cmd, faults="kill_in_save@4")
    assert rc == -9, out[-3000:]
    ck = tmp_path / "checkpoints"
    assert (ck / "step_00000004.partial").is_dir() and not (ck / "step_00000004").exists()
    assert ckpt.latest_step(str(ck)) == 2
    rc, out, _ = _cli(cmd)
    assert rc == 0 and "resuming from step 2" in out, out[-3000:]
    assert _losses(tmp_path) == clean
    assert not (ck / "step_00000004.partial").exists() and verify(ck / "step_00000004") is None


def test_truncated_newest_checkpoint_is_named_and_skipped(tmp_path, clean):
    cmd = [sys.executable, "-m", "distca.train", *ARGS, f"run_dir={tmp_path}"]
    rc, out, _ = _cli(cmd + ["train.steps=4"])
    assert rc == 0, out[-3000:]
    shard = max((tmp_path / "checkpoints" / "step_00000004").glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    rc, out, _ = _cli(cmd)
    assert rc == 0, out[-3000:]
    assert f"checkpoint {tmp_path / 'checkpoints' / 'step_00000004'} is incomplete or damaged" in out
    assert "truncated or torn" in out and "resuming from step 2" in out
    assert _losses(tmp_path) == clean


def test_nan_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCA_FAULTS", "nan@3")
    hist = train(tiny_cfg(tmp_path / "one", *ARGS[1:], "train.max_bad_steps=2"))
    assert [m["skipped_steps"] for m in hist] == [0, 0, 1, 1, 1, 1]
    assert not torch.isfinite(torch.tensor(hist[2]["loss"])) and all(
        torch.isfinite(torch.tensor(m["loss"])) for m in hist[3:])
    monkeypatch.setenv("DISTCA_FAULTS", "nan@3,nan@4")
    with pytest.raises(TooManyBadSteps, match=r"2 steps in a row \(up to step 4\).*step 2 in"):
        train(tiny_cfg(tmp_path / "two", *ARGS[1:], "train.max_bad_steps=2", "checkpoint.every=1"))
    assert ckpt.latest_step(str(tmp_path / "two" / "checkpoints")) == 2  # no bad step was saved


def test_a_skipped_update_leaves_weights_and_optimizer_alone():
    from parallel.data_parallel import build_engine
    from parallel.dims import ParallelDims, ParallelState
    model = torch.nn.Linear(4, 4)
    state = ParallelState(ParallelDims.resolve(1), 0, torch.device("cpu"))
    engine = build_engine(model, state, lambda params, shard_group=None: torch.optim.AdamW(params, lr=0.1),
                          1.0, 0, 1)
    before = [p.detach().clone() for p in model.parameters()]
    (model(torch.ones(2, 4)).sum() * float("nan")).backward()
    assert not torch.isfinite(torch.tensor(engine.step(0.1)))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not engine.optimizer.state  # Adam's moments were never touched


def test_hang_dumps_every_ranks_stack_and_exits(tmp_path):
    rc, out, took = _cli([sys.executable, "-m", "launch.local", "--nproc", "2", *ARGS,
                          "train.global_batch_size=4", "train.hang_timeout_s=8", f"run_dir={tmp_path}"],
                         faults="hang@0:2", timeout=180)
    assert rc != 0 and took < 150, out[-3000:]
    dumps = {p.name: p.read_text() for p in (tmp_path / "hang").glob("rank*.txt")}
    assert set(dumps) == {"rank0.txt", "rank1.txt"}, (sorted(dumps), out[-3000:])
    assert "fault_injection.py" in dumps["rank0.txt"]  # where rank 0 really is
    assert "no progress for" in dumps["rank1.txt"] and "step 2" in dumps["rank1.txt"]
    assert "train.hang_timeout_s" in out


def test_full_disk_is_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTCA_FAULTS", "enospc@4")
    with pytest.raises(ckpt.CheckpointWriteError, match=r"No space left on device.*newest: step 2"):
        train(tiny_cfg(tmp_path, *ARGS[1:]))
    ck = tmp_path / "checkpoints"
    assert ckpt.latest_step(str(ck)) == 2 and verify(ck / "step_00000002") is None
    assert not list(ck.glob("*.partial"))


def test_checkpoint_of_another_model_is_refused_naming_both(tmp_path):
    train(tiny_cfg(tmp_path / "a", *ARGS[1:], "train.steps=2"))
    with pytest.raises(ConfigError, match=r"model.ffn_hidden: checkpoint 352, this run 256"):
        train(tiny_cfg(tmp_path / "b", *ARGS[1:], "model.ffn_hidden=256", f"checkpoint.load={tmp_path / 'a'}"))


def _save_zero(rank, world, tmp):
    train(tiny_cfg(f"{tmp}/z", *ARGS[1:], "train.steps=2", "parallel.zero_stage=2"))


@pytest.mark.slow
def test_checkpoint_of_another_format_is_refused_naming_both(tmp_path):
    from tests.distributed_utils import run_distributed
    run_distributed(_save_zero, 1, str(tmp_path))
    with pytest.raises(ConfigError, match=r"DeepSpeed ZeRO \(parallel.zero_stage=2\).*torch DDP / DCP"
                                          r" \(parallel.zero_stage=0\).*parallel.zero_stage=2"):
        train(tiny_cfg(tmp_path / "d", *ARGS[1:], f"checkpoint.load={tmp_path / 'z'}"))
