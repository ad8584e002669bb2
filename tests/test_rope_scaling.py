"""RoPE scalings against transformers' definitions (modeling_rope_utils), in fp64 on our side:
the inverse frequencies and the attention factor for every type and several parameter sets,
and the rotation angles at positions up to 8x the original context. transformers computes its
frequencies in fp32, so they agree to fp32 rounding (relative 1e-6), not to fp64's. The fused
RoPE kernel takes the scaled cos/sin (the attention factor multiplied in) on the GPU."""
from __future__ import annotations

import math

import pytest
import torch

from distca.config.schema import ModelConfig
from distca.model.rope import attention_factor, inv_freq, rope_cos_sin

transformers = pytest.importorskip("transformers")

CASES = [
    ("default", {"rope_theta": 10000.0}),
    ("default", {"rope_theta": 500000.0}),
    ("linear", {"rope_theta": 10000.0, "factor": 4.0}),
    ("yarn", {"rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 4096}),
    ("yarn", {"rope_theta": 1e6, "factor": 32.0, "original_max_position_embeddings": 32768, "beta_fast": 16.0,
              "beta_slow": 2.0, "attention_factor": 1.2}),
    ("yarn", {"rope_theta": 150000.0, "factor": 40.0, "original_max_position_embeddings": 4096, "truncate": False}),
    ("llama3", {"rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}),
    ("llama3", {"rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}),
]


def _ours(kind: str, p: dict) -> ModelConfig:
    from distca.checkpoint.hf_config import _rope_fields
    fields = _rope_fields({"rope_parameters": {"rope_type": kind, **p}, "max_position_embeddings": 131072})
    return ModelConfig(**fields)


def _theirs(kind: str, p: dict, head_dim: int = 128):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    cfg = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=131072,
                                   rope_parameters={"rope_type": kind, **p})
    if kind == "default":
        inv, scale = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg, None)
    return inv.double(), float(scale)


@pytest.mark.parametrize("kind,params", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_frequencies_and_attention_factor_equal_transformers(kind, params):
    mcfg = _ours(kind, params)
    ours = inv_freq(mcfg, 128)
    theirs, scale = _theirs(kind, params)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert math.isclose(attention_factor(mcfg), scale, rel_tol=1e-12)
    # angles to 8x the original context: the same to fp32 rounding of the frequencies
    original = params.get("original_max_position_embeddings", 8192)
    pos = torch.arange(0, 8 * original, 997, dtype=torch.float64)
    torch.testing.assert_close(torch.outer(pos, ours), torch.outer(pos, theirs), rtol=2e-6, atol=1e-6)


def test_cos_sin_carry_the_attention_factor():
    mcfg = _ours(*CASES[4])
    pos = torch.arange(0, 1000)
    cos, sin = rope_cos_sin(pos, 128, mcfg, torch.float64)
    assert torch.allclose(cos.pow(2) + sin.pow(2), torch.full_like(cos, 1.2 ** 2), rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind,params", [CASES[4], CASES[6]], ids=["yarn", "llama3"])
def test_fused_kernel_takes_scaled_frequencies_and_factor(kind, params):
    """The Triton q/k/v RoPE kernel with cos/sin of a scaling (and YaRN's factor) against the
    fp64 rotation by definition."""
    from distca_kernels.rope import qkv_rope
    mcfg = _ours(kind, params)
    t, h, hk, d = 4096, 8, 2, 128
    pos = torch.randint(0, 8 * mcfg.rope_original_max_position, (t,), device="cuda")
    qkv = torch.randn(t, (h + 2 * hk) * d, device="cuda", dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(pos, d, mcfg, torch.float32)
    q, k, v = qkv_rope(qkv, cos, sin, h, hk, d)
    c64, s64 = rope_cos_sin(pos.cpu(), d, mcfg, torch.float64)
    x = qkv.double().cpu().view(t, h + 2 * hk, d)

    def rot(y):
        y1, y2 = y.chunk(2, -1)
        return torch.cat([y1 * c64[:, None] - y2 * s64[:, None], y2 * c64[:, None] + y1 * s64[:, None]], -1)
    torch.testing.assert_close(q.double().cpu(), rot(x[:, :h]), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(k.double().cpu(), rot(x[:, h:h + hk]), rtol=2e-2, atol=2e-2)
    assert torch.equal(v.cpu(), qkv.cpu().view(t, h + 2 * hk, d)[:, h + hk:])
