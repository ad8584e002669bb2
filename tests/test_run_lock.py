"""One run per run dir (issue 29): a second launch on a held dir exits 2 at once naming the
holder; a lock left by a killed run is taken over with a warning and the run resumes; the
lock is gone after a run ends; a checkpoint.dir outside the run dir is held the same way.
(A torchrun restart taking its own job's lock over: tests/test_faults.py.)"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distca.lifecycle import run_lock
from distca.train import ConfigError, train
from tests.train_utils import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
ARGS = ["experiment=tiny", "data.seq_len=64", "logger.progress=false", "checkpoint.every=1",
        "checkpoint.every_minutes=0"]
AT_ONCE_S = 90  # a refused launch: process start-up only (bound with margin for a loaded machine)


def _rows(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _launch(*args, timeout=AT_ONCE_S):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "distca.train", *args], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    return r.returncode, r.stderr, time.monotonic() - t0


@pytest.mark.slow
def test_a_second_launch_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "distca.train", *ARGS, "train.steps=100000", f"run_dir={run}"],
                             cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len(_rows(run)) < 2 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and len(_rows(run)) >= 2, "the first run did not start"
        # the second launch: refused at once, naming the holder, and the first is untouched
        rc, err, took = _launch(*ARGS, "train.steps=3", f"run_dir={run}")
        assert rc == 2 and took < AT_ONCE_S, (rc, took, err[-2000:])
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"distca: config error: run_dir={run} is in use by another run (host "
                               f"{socket.gethostname()}, pid {first.pid}, started "), err[-2000:]
        assert "Traceback" not in err and err.count("distca: config error") == 1
        assert first.poll() is None
        steps = [r["step"] for r in _rows(run)]
        assert steps == list(range(1, len(steps) + 1))  # one run's steps, none twice
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
        first.wait(timeout=60)
    assert (run / run_lock.LOCK_NAME).exists()
    saved = int((run / "checkpoints" / "latest").read_text())
    # the killed run's lock is stale: taken over with a warning, and the run resumes
    rc, err, _ = _launch(*ARGS, f"train.steps={saved + 1}", f"run_dir={run}", timeout=300)
    assert rc == 0, err[-3000:]
    assert (f"distca: warning: run_dir={run} was locked by a run that ended without releasing it (host "
            f"{socket.gethostname()}, pid {first.pid}") in err and "its process is gone); taking it over" in err
    assert f"resuming from step {saved}" in err
    assert not (run / run_lock.LOCK_NAME).exists()  # released at the end
    assert "taking it over" in (run / "train.log").read_text()  # the warning is in the run's log too


def test_lock_unit_rules(tmp_path, monkeypatch):
    folder = tmp_path / "r"
    lock = run_lock.acquire(str(folder))
    assert run_lock.acquire(str(folder)) is lock  # re-entrant in one process
    holder = json.loads((folder / run_lock.LOCK_NAME).read_text())
    assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    lock.release()
    assert not folder.exists()  # nothing was written there: the folder it made goes too

    # a live process of this host holds it: refused, naming it
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir()
        (folder / run_lock.LOCK_NAME).write_text(json.dumps(
            {"host": socket.gethostname(), "pid": child.pid, "pid_start": run_lock._proc_start(child.pid),
             "started": time.time() - 5}))
        with pytest.raises(run_lock.RunDirBusy, match=f"in use by another run .*pid {child.pid}"):
            run_lock.acquire(str(folder))
        with pytest.raises(run_lock.RunDirBusy, match=f"is inside {folder}, which another run uses"):
            run_lock.acquire(str(folder / "checkpoints"), what="checkpoint.dir")
        # the same pid reused by another process (another start time) is not the holder
        holder = json.loads((folder / run_lock.LOCK_NAME).read_text())
        (folder / run_lock.LOCK_NAME).write_text(json.dumps({**holder, "pid_start": "1"}))
        warned = []
        run_lock.acquire(str(folder), warn=warned.append).release()
        assert warned and "its process is gone" in warned[0]
    finally:
        child.kill()
        child.wait()

    # another host: judged by the heartbeat's age
    other = {"host": "elsewhere", "pid": 1, "started": time.time() - 3600}
    (folder / run_lock.LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(run_lock.RunDirBusy, match="host elsewhere"):
        run_lock.acquire(str(folder))
    old = time.time() - run_lock.STALE_AFTER_S - 60
    os.utime(folder / run_lock.LOCK_NAME, (old, old))
    warned = []
    run_lock.acquire(str(folder), warn=warned.append).release()
    assert warned and "no heartbeat for" in warned[0]

    # a torchrun restart of the holder's own job is the same run: no warning, no refusal
    (folder / run_lock.LOCK_NAME).write_text(json.dumps({**other, "job": "job-7"}))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    warned = []
    run_lock.acquire(str(folder), warn=warned.append).release()
    assert not warned
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt of a job is not a restart
    (folder / run_lock.LOCK_NAME).write_text(json.dumps({**other, "job": "job-7"}))
    with pytest.raises(run_lock.RunDirBusy):
        run_lock.acquire(str(folder))


def test_a_checkpoint_dir_held_by_another_run_is_a_config_error(tmp_path):
    shared = tmp_path / "shared_checkpoints"
    shared.mkdir()
    (shared / run_lock.LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time()}))
    with pytest.raises(ConfigError, match=f"checkpoint.dir={shared} is in use by another run \\(host elsewhere"):
        train(tiny_cfg(tmp_path / "b", "train.steps=1", f"checkpoint.dir={shared}"))
    assert not (tmp_path / "b").exists()  # no run dir left by the refused run
