"""Which kernels a call gets: the fused backward only where allowed (deterministic=False) and
measured faster (head dim 128, 16-bit, GQA groups up to FUSED_MAX_GROUP); the `deterministic` argument and torch's
global setting reach the selection. CPU only: the kernels themselves are tested elsewhere."""
from __future__ import annotations

import pytest
import torch

import distca_kernels.flash_attn.interface as interface
import distca_kernels.flash_attn.triton_attention as triton_attention
from distca_kernels.flash_attn import flash_attn_varlen_func
from distca_kernels.flash_attn.block_config import FUSED_MAX_GROUP, AttentionConfigs, TileConfig, select_configs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_backward_only_when_nondeterministic_and_no_gqa(dtype):
    fused = select_configs(128, dtype, interpret=False, group=1, deterministic=False).fused
    assert fused is not None and fused.gluon
    assert select_configs(128, dtype, interpret=False, group=1, deterministic=True).fused is None
    assert select_configs(128, dtype, interpret=False, group=FUSED_MAX_GROUP + 1, deterministic=False).fused is None
    # unmeasured shapes keep the pair
    assert select_configs(64, dtype, interpret=False, group=1, deterministic=False).fused is None
    assert select_configs(128, torch.float32, interpret=False, group=1, deterministic=False).fused is None


def test_fused_backward_config_must_be_gluon():
    """The one-kernel backward exists only in Gluon: a Triton tile config for it is refused
    when the configs are built, not silently replaced by the pair at the first backward."""
    pair = dict(forward=TileConfig(16, 16), dkdv=TileConfig(16, 16), dq=TileConfig(16, 16))
    with pytest.raises(ValueError, match="fused must be a Gluon config"):
        AttentionConfigs(**pair, fused=TileConfig(128, 64, 8, 2))
    AttentionConfigs(**pair, fused=TileConfig(128, 64, 8, tma=True, gluon=True))


def _captured_deterministic(monkeypatch, **kwargs):
    """Call the public function on CPU with the kernel replaced; return what it was asked for."""
    seen = {}

    class Spy:
        @staticmethod
        def apply(q, k, v, cu_q, cu_k, scale, causal, interpret, configs, deterministic):
            seen["deterministic"] = deterministic
            return torch.zeros_like(q), torch.zeros(q.shape[1], q.shape[0])

    monkeypatch.setattr(interface, "_use_triton", lambda q: (True, True))
    monkeypatch.setattr(triton_attention, "TritonVarlenAttention", Spy)
    q = torch.randn(6, 2, 16)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    flash_attn_varlen_func(q, q, q, cu, cu, 6, 6, **kwargs)
    return seen["deterministic"]


def test_deterministic_argument_and_torch_setting(monkeypatch):
    assert _captured_deterministic(monkeypatch, deterministic=True) is True
    assert _captured_deterministic(monkeypatch, deterministic=False) is False
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        assert _captured_deterministic(monkeypatch) is False
        torch.use_deterministic_algorithms(True)
        assert _captured_deterministic(monkeypatch) is True
        # an explicit argument wins over torch's setting
        assert _captured_deterministic(monkeypatch, deterministic=False) is False
    finally:
        torch.use_deterministic_algorithms(before)


def test_deterministic_must_be_a_bool_or_none():
    q = torch.randn(6, 2, 16)
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="deterministic"):
        flash_attn_varlen_func(q, q, q, cu, cu, 6, 6, deterministic="yes")
