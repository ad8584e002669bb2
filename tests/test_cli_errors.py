"""What a new user trips over (issue 29), through the command line as they run it: each case
ends in one line of ours, `distca: config error: ...` with the fix, exit 2, within a bound
(process start-up only, with margin for a loaded machine), and leaves no run dir behind.
A GPU-sized model run on the CPU anyway (train.device=cpu) stops at once on SIGTERM."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distca.config import compose_config, to_typed
from distca.config.validate import check_attention_kernels
from distca.lifecycle.stopping import LONG_STEP_S
from distca.observe.console import cpu_step_seconds
from distca.startup import _step_flops

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
AT_ONCE_S = 90


def _train(*args, cwd, env=None, timeout=AT_ONCE_S):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "distca.train", *args], cwd=cwd, env=env or ENV,
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stderr, time.monotonic() - t0


def _one_line_error(rc, err, took, *says):
    """Exit 2 in time, no traceback, and the last line is our message holding every phrase."""
    assert rc == 2 and took < AT_ONCE_S, (rc, took, err[-3000:])
    assert "Traceback" not in err and err.count("distca: config error:") == 1, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("distca: config error: "), err[-3000:]
    for s in says:
        assert s in line, (s, line)
    return line


@pytest.mark.parametrize("override, says", [
    ("train.stpes=3", ["unknown config key train.stpes", "did you mean train.steps"]),
    ("train.dtype=fp16", ["train.dtype=fp16 is not a choice of train.dtype; use one of fp32, bf16"]),
    ("model=2b", ["model=2b is not one of the model presets; use one of 1b, 34b, 8b, 8b_hybrid, tiny"]),
])
def test_hydra_composition_errors_are_ours(tmp_path, override, says):
    line = _one_line_error(*_train("experiment=tiny", override, cwd=tmp_path), *says)
    assert "+train" not in line and "HYDRA_FULL_ERROR" not in line
    assert list(tmp_path.iterdir()) == []  # nothing written: no runs/ folder


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "a_file").write_text("")
    for run_dir, why in (("a_file", "File exists"), ("a_file/sub", "Not a directory")):
        _one_line_error(*_train("experiment=tiny", f"run_dir={run_dir}", cwd=tmp_path),
                        f"run_dir={run_dir} is not a folder this process can create and write ({why})",
                        "set run_dir to a new or writable folder")


def test_head_size_the_attention_kernel_cannot_run(tmp_path):
    _one_line_error(*_train("experiment=tiny", "model.head_dim=10", cwd=tmp_path,
                            env={**ENV, "TRITON_INTERPRET": "1"}),
                    "model.head_dim=10 cannot run in the softmax attention kernel under TRITON_INTERPRET=1",
                    "16, 32, 64, 128")
    assert list(tmp_path.iterdir()) == []


def test_head_size_check_applies_where_the_kernels_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = to_typed(compose_config(["experiment=tiny", "model.head_dim=10"]))
    check_attention_kernels(cfg, torch.device("cpu"))  # the torch reference takes any size
    with pytest.raises(ValueError, match="model.head_dim=10 cannot run in the softmax attention kernel on the GPU"):
        check_attention_kernels(cfg, torch.device("cuda", 0))
    linear = to_typed(compose_config(["experiment=tiny", "model.layers=LLLL", "model.head_dim=320"]))
    with pytest.raises(ValueError, match="linear attention kernel on the GPU: it takes head sizes up to 256"):
        check_attention_kernels(linear, torch.device("cuda", 0))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_attention_kernels(to_typed(compose_config(["experiment=tiny", "model.head_dim=10", "train.dtype=bf16"])),
                            torch.device("cpu"))  # CPU bf16 takes the reference even then


def _gpu_sized():
    """A tiny model with a global batch whose CPU step is estimated at about twice
    LONG_STEP_S on one thread (so on any machine), though every micro-batch is small."""
    cfg = to_typed(compose_config(["experiment=tiny", "data.seq_len=64"]))
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_sample = cpu_step_seconds(torch.device("cpu"), _step_flops(cfg, 320), 1) / cfg.train.global_batch_size
    finally:
        torch.set_num_threads(torch_threads)
    return ["experiment=tiny", "data.seq_len=64", "logger.progress=false",
            f"train.global_batch_size={int(2 * LONG_STEP_S / per_sample)}"]


def test_gpu_sized_model_on_the_cpu_is_refused_with_its_estimate(tmp_path):
    line = _one_line_error(*_train(*_gpu_sized(), cwd=tmp_path), "set train.device=cpu to run it here anyway")
    assert re.search(r"FLOP per step: a step takes about (19:[45]\d|20:[01]\d) on this CPU", line), line
    assert list(tmp_path.iterdir()) == []


def test_a_stop_during_such_a_step_aborts_without_saving(tmp_path):
    """train.device=cpu runs it; a SIGTERM in its 20-minute first step stops at once, says so,
    saves nothing (exit 143)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "distca.train", *_gpu_sized(), "train.device=cpu",
                             f"run_dir={run}"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "train.log").exists() or "distca: starting" not in (run / "train.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
        time.sleep(1)  # inside step 1
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143 and took < 30, (proc.returncode, took, err[-3000:])
    assert re.search(r"SIGTERM received: a step takes about \d+:\d\d .*so the run stops now without saving", err), err
    assert "Traceback" not in err, err[-3000:]
    assert "stops at once without saving" in (run / "train.log").read_text()  # the banner said so
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").read_text()


def test_a_config_error_leaves_no_run_dir(tmp_path):
    # a default-named run dir, and a sweep's folder: nothing left, not even runs/
    _one_line_error(*_train("experiment=tiny", "train.lr=-1", cwd=tmp_path), "train.lr=-1.0 must be >= 0")
    _one_line_error(*_train("-m", "experiment=tiny", "train.lr=-1,-2", f"run_dir={tmp_path}/sweep",
                            cwd=tmp_path), "train.lr=-1.0 must be >= 0")
    assert list(tmp_path.iterdir()) == []
    # a bad checkpoint.load into a new run dir, and into an existing empty one (kept, still empty)
    (tmp_path / "mine").mkdir()
    for run_dir in ("new", "mine"):
        _one_line_error(*_train("experiment=tiny", f"checkpoint.load={tmp_path}/nowhere", f"run_dir={run_dir}",
                                cwd=tmp_path), f"checkpoint.load={tmp_path}/nowhere holds no checkpoint")
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and list((tmp_path / "mine").iterdir()) == []
