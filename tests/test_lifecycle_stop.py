"""Stopping: SIGTERM / Ctrl-C are acknowledged at once, the step finishes, every rank saves and
the process exits 143 / 130 with no traceback (issue 20, item 3)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distca.lifecycle.stopping import StopSignals

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
ARGS = ["experiment=tiny", "data.seq_len=64", "train.steps=2000", "logger.progress=false"]


def _rows(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _stop_after_steps(cmd, run_dir: Path, sig, steps=2):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while _rows(run_dir) < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_saves_and_exits_nonzero(tmp_path, sig, code, name):
    rc, out = _stop_after_steps([sys.executable, "-m", "distca.train", *ARGS, f"run_dir={tmp_path}"], tmp_path, sig)
    assert rc == code, out[-3000:]
    assert f"{name}" in out and "received: finishing this step, saving" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert int((tmp_path / "checkpoints" / "latest").read_text()) == last  # the step it finished
    assert f"stopped by {name} after step {last}/2000" in out


@pytest.mark.slow
def test_torchrun_stop_is_quiet(tmp_path):
    """Two ranks under the launcher: SIGTERM to the launcher, every rank saves, exit 143, no
    torchrun traceback."""
    cmd = [sys.executable, "-m", "launch.local", *ARGS, "parallel.cp=2", "parallel.cp_algo=ring",
           f"run_dir={tmp_path}"]
    rc, out = _stop_after_steps(cmd, tmp_path, signal.SIGTERM)
    assert rc == 143, out[-3000:]
    assert "Traceback" not in out and "SignalException" not in out, out[-3000:]
    assert out.count("SIGTERM received") == 1, out[-3000:]  # rank 0 speaks for all
    saved = int((tmp_path / "checkpoints" / "latest").read_text())
    assert sorted(p.name for p in (tmp_path / "checkpoints" / f"step_{saved:08d}").glob("rng_rank*")) == \
        ["rng_rank0.pt", "rng_rank1.pt"]


def test_second_ctrl_c_aborts_but_a_forwarded_copy_does_not(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("distca.lifecycle.stopping.time.monotonic", lambda: now[0])
    s = StopSignals(loud=False)
    exits = []
    s._exit = exits.append
    s._handler(signal.SIGINT, None)
    assert s.signum == signal.SIGINT and not exits
    now[0] += 0.2
    s._handler(signal.SIGINT, None)  # torchrun forwarding the same press: ignored
    s._handler(signal.SIGTERM, None)  # already stopping
    assert not exits
    now[0] += 2
    s._handler(signal.SIGINT, None)
    assert exits == [130]  # aborted at once, nothing saved


def test_a_stop_during_a_long_step_aborts_without_waiting_for_the_main_thread():
    """Where a step takes longer than a stop can wait, the first SIGTERM aborts (exit 143),
    decided by the signal pipe's thread while the main thread is still busy (here: asleep
    with SIGTERM blocked, so its Python handler cannot run before the sleep ends, as in one
    long CPU operator)."""
    decided = []
    with StopSignals(loud=False, long_steps="a step takes about 0:20:00 here") as s:
        s._exit = lambda code: decided.append((code, time.monotonic()))
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            sent = time.monotonic()
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
            time.sleep(4)
            busy_until = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert decided and decided[0][0] == 143, decided
    assert decided[0][1] < busy_until - 1 and decided[0][1] - sent < 2.5, (decided, sent, busy_until)


def test_stop_during_set_up_exits_before_step_1(tmp_path, monkeypatch):
    """A signal while the model is being built must not start an (hours-long) step."""
    from distca.lifecycle.stopping import Stopped
    from distca.train import train
    from tests.train_utils import tiny_cfg

    enter = StopSignals.__enter__

    def signalled_at_once(self):
        enter(self)
        self.signum = signal.SIGTERM
        return self
    monkeypatch.setattr(StopSignals, "__enter__", signalled_at_once)
    with pytest.raises(Stopped) as e:
        train(tiny_cfg(tmp_path, "train.steps=3"))
    assert e.value.exit_code == 143 and e.value.step == 0
    assert not (tmp_path / "metrics.jsonl").read_text()  # no step ran
