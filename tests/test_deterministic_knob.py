"""train.deterministic reaches the attention kernels (through torch's global switch, which
flash_attn_varlen_func follows) for the whole run, and is undone after it."""
import torch

import parallel.context.local as local_attention
from distca.train import train
from tests.train_utils import tiny_cfg


def _record_switch(monkeypatch):
    seen = []
    real = local_attention.flash_attn_varlen_func

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)
    monkeypatch.setattr(local_attention, "flash_attn_varlen_func", spy)
    return seen


def test_deterministic_run_sets_and_restores_the_switch(tmp_path, monkeypatch):
    assert not torch.are_deterministic_algorithms_enabled()
    seen = _record_switch(monkeypatch)
    train(tiny_cfg(tmp_path / "on", "train.steps=2", "train.device=cpu", "train.deterministic=true"))
    assert seen and all(seen), seen  # every attention call of every step saw it on
    assert not torch.are_deterministic_algorithms_enabled()  # the process is left as it was


def test_default_run_leaves_the_switch_alone(tmp_path, monkeypatch):
    seen = _record_switch(monkeypatch)
    train(tiny_cfg(tmp_path / "off", "train.steps=1", "train.device=cpu"))
    assert seen and not any(seen), seen


def test_cublas_workspace_is_set_inside_and_restored_after(monkeypatch):
    """CUBLAS_WORKSPACE_CONFIG, which deterministic cuBLAS needs, lives only as long as the
    run; a user's own value is kept as it is."""
    import os

    from distca.lifecycle.determinism import deterministic_kernels
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic_kernels(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_kernels(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
