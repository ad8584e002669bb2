"""Bad input fails early with an error naming the field and the fix."""
import pytest

from distca.config import compose_config, to_typed
from distca.config.errors import ConfigError
from distca.train import train
from distca.config.validate import build_plan
from tests.train_utils import tiny_cfg


def _err(cfg, world=1):
    with pytest.raises(ValueError) as e:
        build_plan(to_typed(cfg), world)
    return str(e.value)


def test_degrees_not_matching_world(tmp_path):
    msg = _err(tiny_cfg(tmp_path, "parallel.dp=2", "parallel.cp=2", "parallel.cp_algo=ring"), world=6)
    assert "world size is 6" in msg and "parallel.dp" in msg
    msg = _err(tiny_cfg(tmp_path, "parallel.cp=4", "parallel.cp_algo=ring"), world=6)
    assert "not divisible" in msg and "parallel.cp" in msg


def test_heads_not_divisible_by_tp(tmp_path):
    msg = _err(tiny_cfg(tmp_path, "parallel.tp=3"), world=3)
    assert "parallel.tp=3" in msg and "model.heads" in msg


def test_tp_needs_divisible_ffn_and_no_deepspeed(tmp_path):
    msg = _err(tiny_cfg(tmp_path, "parallel.tp=2", "model.ffn_hidden=353"), world=2)
    assert "model.ffn_hidden=353" in msg and "parallel.tp=2" in msg
    msg = _err(tiny_cfg(tmp_path, "parallel.tp=2", "parallel.zero_stage=2"), world=4)
    assert "parallel.zero_stage=2" in msg and "parallel.zero_stage=0" in msg


def test_cp_needs_an_algorithm(tmp_path):
    assert "parallel.cp_algo" in _err(tiny_cfg(tmp_path, "parallel.cp=2"), world=2)


def test_unknown_option_value(tmp_path):
    """Choice fields are enums: an unknown value fails at composition, listing the choices."""
    for override, choices in (("parallel.cp_algo=bogus", "local, ring, allgather, ulysses, usp, cad"),
                              ("train.dtype=fp8", "fp32, bf16")):
        with pytest.raises(ConfigError) as e:
            tiny_cfg(tmp_path, override)
        assert str(e.value) == f"{override} is not a choice of {override.split('=')[0]}; use one of {choices}"
    assert "model.layers" in _err(tiny_cfg(tmp_path, "model.layers=SXS"))


@pytest.mark.parametrize("override, says", [
    # Hydra's own text would say "To append to your config use +parallel.cpp=2": ours names the field
    ("parallel.cpp=2", "unknown config key parallel.cpp (the parallel section has: dp, tp"),
    ("parallel.cpp=2", "); did you mean parallel.pp or parallel.cp?"),
    ("trian.steps=3", "unknown config key trian (the top section has: model, parallel"),
    ("train.steps=abc", "train.steps=abc: train.steps takes an integer (default train.steps=200)"),
    ("logger.wandb=maybe", "logger.wandb=maybe: logger.wandb takes true or false (default logger.wandb=false)"),
    ("model=2b", "model=2b is not one of the model presets; use one of 1b, 34b, 8b, 8b_hybrid, tiny"),
    ("experiment=nope", "experiment=nope is not one of the experiment presets; use one of e2e_1b, tiny"),
    ("train=x", "train=x: train is a section, not a value"),
    ("train.lr=[1", "the override train.lr=[1 does not parse"),
    ("train.lr=1e-3,3e-3", "train.lr=1e-3,3e-3 holds a comma: add -m to sweep over its values"),
])
def test_composition_errors_are_one_line_with_the_fix(override, says):
    with pytest.raises(ConfigError) as e:
        compose_config(["experiment=tiny", override])
    text = str(e.value)
    assert says in text and "\n" not in text and f"+{override}" not in text, text


def test_every_swept_value_is_checked():
    from distca.config.compose import check_composes
    check_composes(["experiment=tiny", "train.lr=1e-3,3e-3", "model=tiny,1b"], multirun=True)
    with pytest.raises(ConfigError, match="model=2b is not one of the model presets"):
        check_composes(["experiment=tiny", "train.lr=1e-3,3e-3", "model=tiny,2b"], multirun=True)


def test_batch_not_divisible(tmp_path):
    msg = _err(tiny_cfg(tmp_path, "train.global_batch_size=3", "parallel.dp=2"), world=2)
    assert "train.global_batch_size=3" in msg and "parallel.dp" in msg


def test_missing_data_path(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.source=jsonl", f"data.paths=[{tmp_path}/nope/*.jsonl]")
    with pytest.raises(ValueError, match="data.paths"):
        train(cfg)


# --- issue 20, item 4: every case names the field and the fix, before any step -------------

def test_unknown_key_rejected_even_with_plus(tmp_path):
    from distca.train import ConfigError
    with pytest.raises(ConfigError) as e:
        train(tiny_cfg(tmp_path, "+parallel.cpp=2"))
    assert "unknown config key parallel.cpp" in str(e.value) and "parallel.cp?" in str(e.value)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, says", [
    ("model.kv_heads=0", "model.kv_heads=0"),
    ("train.lr=-1", "train.lr=-1.0 must be >= 0"),
    ("train.beta2=1.5", "train.beta2=1.5"),
    ("train.log_every=0", "train.log_every=0"),
    ("checkpoint.keep=-1", "checkpoint.keep=-1"),
    ("data.paths=[/tmp/some.jsonl]", "data=jsonl"),           # stdlib source ignores paths
    ("parallel.tp=2", "needs 2 processes but this run has 1; start 2: python -m launch.local --nproc 2"),
    # both problems at once (the process count, then the algorithm, used to come one launch apart)
    ("parallel.cp=2", "needs 2 processes but this run has 1; start 2: python -m launch.local --nproc 2 ... (or "
                      "torchrun --nproc_per_node 2), or lower the degrees; and parallel.cp=2 needs a "
                      "context-parallel algorithm: set parallel.cp_algo to ring, allgather, ulysses, usp or cad"),
])
def test_single_field_errors_name_the_field_and_fix(tmp_path, override, says):
    assert says in _err(tiny_cfg(tmp_path, override))


def test_checkpoint_dir_not_writable_fails_before_step_1(tmp_path):
    from distca.train import ConfigError
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"checkpoint.dir={blocker} is not a writable folder"):
        train(tiny_cfg(tmp_path / "run", f"checkpoint.dir={blocker}"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_config_error_once_no_traceback_exit_2(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "distca.train", "experiment=tiny", "train.lr=-1",
                        f"run_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.count("distca: config error: train.lr=-1.0 must be >= 0") == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("distca: config error")
