"""Rotary position embeddings and their scalings for context extension.

The rotation itself is the fused q/k/v kernel's (distca_kernels/rope: half-split pairs, as HF Llama);
this file decides the frequencies and the factor cos/sin are multiplied by:

- default: inv_freq_i = theta^(-2i/d) ("ABF", a larger base, is just a larger model.rope_theta);
- linear: every frequency divided by `factor` (positions interpolated);
- yarn: per frequency a blend of the interpolated and the original frequency by a linear ramp
  between the correction dimensions of `beta_fast` and `beta_slow` rotations over the original
  context; cos/sin scaled by the attention factor (0.1 ln(factor) + 1 unless given);
- llama3: wavelengths longer than original/low_freq_factor divided by `factor`, shorter than
  original/high_freq_factor kept, a smooth blend between (Llama 3.1).

The definitions follow the papers and match transformers' `modeling_rope_utils` numerically
(tests/test_rope_scaling.py compares both in fp64 up to 8x the original length). Frequencies
are computed in fp64 and the angles in fp32 (as transformers does) before cos/sin.
"""
from __future__ import annotations

import math

import torch

from distca.config.schema import RopeScaling


def attention_factor(mcfg) -> float:
    """The factor cos and sin are multiplied by (YaRN's attention temperature; 1 otherwise)."""
    if RopeScaling(mcfg.rope_scaling) != RopeScaling.yarn:
        return 1.0
    if mcfg.rope_attention_factor > 0:
        return float(mcfg.rope_attention_factor)
    return 0.1 * math.log(mcfg.rope_factor) + 1.0 if mcfg.rope_factor > 1 else 1.0


def inv_freq(mcfg, head_dim: int) -> torch.Tensor:
    """[head_dim / 2] inverse frequencies (fp64) of model.rope_theta and model.rope_scaling."""
    d = head_dim
    base = torch.arange(0, d, 2, dtype=torch.float64) / d
    freq = 1.0 / (mcfg.rope_theta ** base)
    kind = RopeScaling(mcfg.rope_scaling)
    if kind == RopeScaling.none:
        return freq
    factor = float(mcfg.rope_factor)
    if kind == RopeScaling.linear:
        return freq / factor
    original = float(mcfg.rope_original_max_position)
    if kind == RopeScaling.llama3:
        low_wavelen = original / mcfg.rope_low_freq_factor
        high_wavelen = original / mcfg.rope_high_freq_factor
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
        smooth = (original / wavelen - mcfg.rope_low_freq_factor) / (
            mcfg.rope_high_freq_factor - mcfg.rope_low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)
    # yarn: the dimension at which a frequency turns `rotations` times over the original context
    def correction_dim(rotations: float) -> float:
        return d * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(mcfg.rope_theta))

    low, high = correction_dim(mcfg.rope_beta_fast), correction_dim(mcfg.rope_beta_slow)
    if mcfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # a ramp of zero width
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency (high frequencies), 0: interpolated
    return freq / factor * (1 - keep) + freq * keep


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, mcfg, dtype: torch.dtype):
    """cos/sin [T, head_dim/2] for per-token positions (positions restart at every document),
    already multiplied by the attention factor."""
    freq = inv_freq(mcfg, head_dim).to(device=position_ids.device, dtype=torch.float32)
    angles = position_ids.to(torch.float32).unsqueeze(-1) * freq
    scale = attention_factor(mcfg)
    cos, sin = angles.cos(), angles.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)
