"""Input checks for `chunk_lightning_attn`: every rejection is a ValueError naming the argument.

Kept apart from the kernels so that the torch reference path and the Triton path refuse the
same inputs with the same messages.
"""
from __future__ import annotations

import math

import torch

from distca_kernels.arguments import FLOAT_DTYPES, require_float_tensor, require_tensor


def validate_inputs(q, k, v, g_gamma, g, scale, initial_state, output_final_state, cu_seqlens):
    """Raise ValueError for malformed arguments; return the number of sequences N."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        require_float_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, T, H, D], got shape {tuple(x.shape)}")
    b, t, h, kd = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (b, t, h):
        raise ValueError(f"v must be [B, T, H, V] with B, T, H = {b, t, h} as in q, "
                         f"got {tuple(v.shape)}")
    if kd == 0 or v.shape[3] == 0:
        raise ValueError("q and v need a head dimension of at least 1")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"k and v must have q's dtype {q.dtype}, got {k.dtype} and {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError("q, k and v must be on one device")
    if g_gamma is not None and g is not None:
        raise ValueError("g_gamma and g are two forms of the decay: pass one of them, or neither")
    if g_gamma is not None:
        require_tensor("g_gamma", g_gamma)
        if tuple(g_gamma.shape) != (h,):
            raise ValueError(f"g_gamma must have shape [H] = [{h}], got {tuple(g_gamma.shape)}")
        _check_log_decay(g_gamma, "g_gamma", q.device)
    if g is not None:
        require_tensor("g", g)
        if tuple(g.shape) != (b, t, h):
            raise ValueError(f"g must have shape [B, T, H] = {[b, t, h]}, got {tuple(g.shape)}")
        _check_log_decay(g, "g", q.device)
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive finite number or None, got {scale!r}")
    if not isinstance(output_final_state, bool):
        raise ValueError(f"output_final_state must be a bool, got {output_final_state!r}")
    n = _validate_cu_seqlens(cu_seqlens, b, t)
    if initial_state is not None:
        require_tensor("initial_state", initial_state)
        want = (n, h, kd, v.shape[3])
        if tuple(initial_state.shape) != want:
            raise ValueError(f"initial_state must be [N, H, K, V] = {list(want)} (N = number of "
                             f"sequences), got {tuple(initial_state.shape)}")
        if initial_state.dtype not in FLOAT_DTYPES:
            raise ValueError(f"initial_state must be a float tensor (float32 advised), "
                             f"got {initial_state.dtype}")
        if initial_state.device != q.device:
            raise ValueError("initial_state must be on q's device")
    return n


def _check_log_decay(x, name, device):
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float tensor, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} must be on q's device")
    # Values are checked only on the CPU: on a GPU the check would stall the host on every
    # call. Positive log-decays would make exp(G_t - G_s) grow without bound.
    if x.device.type == "cpu" and x.numel() and bool((x.detach() > 0).any()):
        raise ValueError(f"{name} is a log-decay and must be <= 0 everywhere "
                         f"(max found {float(x.detach().max()):.3g})")


def _validate_cu_seqlens(cu_seqlens, b, t):
    if cu_seqlens is None:
        return b
    require_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with N+1 >= 2 entries, got shape "
                         f"{tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype == torch.bool:
        raise ValueError(f"cu_seqlens must be an integer tensor, got {cu_seqlens.dtype}")
    if b != 1:
        raise ValueError(f"cu_seqlens needs the batch flattened to B=1 (one packed row), got B={b}")
    cs = cu_seqlens.tolist()
    if cs[0] != 0 or cs[-1] != t:
        raise ValueError(f"cu_seqlens must start at 0 and end at T={t}, got {cs[0]}..{cs[-1]}")
    if any(cs[i + 1] < cs[i] for i in range(len(cs) - 1)):
        raise ValueError("cu_seqlens must be non-decreasing")
    return len(cs) - 1
