"""Run dirs, resume decisions and what rank 0 prints around training (issue 20, items 1-2)."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from distca.observe.metrics import step_line
from distca.lifecycle.run_dir import default_name, hydra_overrides
from distca.train import ConfigError, train
from tests.train_utils import tiny_cfg

SAVE = ("checkpoint.save_final=true", "checkpoint.every_minutes=0")


def test_default_run_dirs_are_unique_and_named_after_the_run():
    a, b = default_name(["experiment=tiny"]), default_name(["experiment=tiny"])
    assert a != b and os.path.basename(a).startswith("tiny-")
    assert os.path.basename(default_name(["model=1b"])).startswith("1b-")
    assert os.path.basename(default_name([])).startswith("train-")  # the default job's


def test_readme_says_what_the_default_job_is():
    from pathlib import Path

    from distca.config import compose_config
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    intro = readme[readme.index("Train the default job"):readme.index("<!-- main-command -->")]
    steps = compose_config([]).train.steps
    assert f"{steps} steps" in " ".join(intro.split()) and "`runs/train-<date>-<time>-<id>`" in intro, intro
    sweep = hydra_overrides(["-m", "train.lr=1e-3,2e-3"], rank=0)
    assert "hydra.sweep.subdir=${hydra.job.num}" in sweep
    assert "run_dir=${hydra:sweep.dir}/${hydra:sweep.subdir}" in sweep
    # other ranks write nothing of Hydra's (rank 0's run dir reaches them by broadcast)
    assert "hydra.run.dir=." in hydra_overrides(["run_dir=x"], rank=1)


def test_resume_says_where_from_and_a_finished_run_says_so(tmp_path, capsys):
    run = tmp_path / "a"
    assert len(train(tiny_cfg(run, "train.steps=2", *SAVE))) == 2
    assert "starting fresh at step 1" in capsys.readouterr().err
    assert train(tiny_cfg(run, "train.steps=2", *SAVE)) == []  # nothing to do, and says so
    assert "run already finished: step 2 of train.steps=2" in capsys.readouterr().err
    hist = train(tiny_cfg(run, "train.steps=3", *SAVE))
    assert [m["step"] for m in hist] == [3]
    assert f"resuming from step 2 of {run}/checkpoints" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="checkpoint.resume=never but .* holds checkpoints"):
        train(tiny_cfg(run, "train.steps=4", "checkpoint.resume=never", *SAVE))
    # another run starts from this one's checkpoint in its own dir
    hist = train(tiny_cfg(tmp_path / "b", "train.steps=4", f"checkpoint.load={run}", *SAVE))
    assert [m["step"] for m in hist] == [4]
    assert f"starting from step 3 of {run}/checkpoints (checkpoint.load)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="checkpoint.load=.*nowhere holds no checkpoint"):
        train(tiny_cfg(tmp_path / "c", f"checkpoint.load={tmp_path}/nowhere"))


def test_banner_log_file_log_every_and_resolved_config(tmp_path, capsys):
    train(tiny_cfg(tmp_path, "train.steps=5", "train.log_every=2"))
    err = capsys.readouterr().err
    log = (tmp_path / "train.log").read_text()
    for fact in ("run dir", "779K parameters", "dp 1 x tp 1 x pp 1 x cp 1",
                 "device       cpu, 1 thread per process (OMP_NUM_THREADS=1)",
                 "seq_len 64", "starting fresh", "W&B", "finished 5 steps", "loss "):
        assert fact in err and fact in log, fact
    steps = [l.split()[1] for l in log.splitlines() if l.startswith("step ")]
    assert steps == ["1/5", "2/5", "4/5", "5/5"]  # every 2nd, plus the first and last
    assert "mfu n/a" in log  # no known peak on a CPU
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 5  # every step
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["mfu"] is None
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (cfg["model"]["vocab_size"], cfg["model"]["head_dim"], cfg["parallel"]["dp"]) == (320, 32, 1)
    assert cfg["run"]["world_size"] == 1 and cfg["run"]["versions"]["torch"]
    assert cfg["run"]["git_commit"] != ""


def test_step_line_fits_80_columns():
    m = {"step": 123456, "loss": 11.123456, "tokens_per_s": 123456789.0, "mfu": 0.512, "max_mem_gib": 139.9}
    line = step_line(m, 1000000, elapsed=3 * 86400 + 5, eta=9 * 86400)
    assert len(line) <= 80, (len(line), line)
    assert "mfu 51%" in line and "eta" in line
    assert "mfu n/a" in step_line({**m, "mfu": None}, 1000000, 1.0, None)


def test_keep_last_k_and_time_based_saves(tmp_path):
    ck = tmp_path / "checkpoints"
    train(tiny_cfg(tmp_path, "train.steps=4", "checkpoint.save_final=false", "checkpoint.keep=2",
                   "checkpoint.every_minutes=1e-9"))  # due after every step
    assert sorted(p.name for p in ck.iterdir() if p.name.startswith("step_")) == ["step_00000003", "step_00000004"]
    assert (ck / "latest").read_text() == "4"


@pytest.mark.slow
def test_sweep_jobs_get_their_own_run_dirs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "distca.train", "-m", "experiment=tiny", "data.seq_len=64",
                        "train.steps=1,2", f"run_dir={tmp_path}/sweep"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [len((tmp_path / "sweep" / job / "metrics.jsonl").read_text().splitlines()) for job in ("0", "1")]
    assert rows == [1, 2], r.stderr[-3000:]  # job 1 did not resume job 0
    assert "resuming" not in r.stderr
