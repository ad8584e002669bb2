"""Input checks for the public attention functions: every failure is a ValueError naming the argument."""
from __future__ import annotations

import math
import operator

import torch
from torch.utils.weak import WeakIdKeyDictionary

from distca_kernels.arguments import FLOAT_DTYPES

# cu_seqlens tensors whose values were checked, with the in-place version they had then.
# Reading values off the GPU is a host sync; callers that keep one cu_seqlens tensor per step
# (every layer gets the same one) pay it once instead of once per layer.
_checked_cu_seqlens: WeakIdKeyDictionary = WeakIdKeyDictionary()


def check_attention_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 3-D tensor [tokens, heads, head_dim], got {got}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"k and v must have q's dtype {q.dtype}, got k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"k and v must be on q's device {q.device}, got k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[1]
    if k.shape[2] != d:
        raise ValueError(f"k head_dim {k.shape[2]} must equal q head_dim {d}")
    if hq == 0 or hkv == 0 or d == 0:
        raise ValueError(f"q and k need at least one head and head_dim > 0, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if hq % hkv != 0:
        raise ValueError(f"q heads ({hq}) must be a multiple of k/v heads ({hkv}) for GQA/MQA")
    # positive: the kernels take the row max of unscaled scores and scale it afterwards
    if softmax_scale is not None and not (isinstance(softmax_scale, (int, float)) and math.isfinite(softmax_scale)
                                          and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be a positive finite number or None (1/sqrt(head_dim)), "
                         f"got {softmax_scale!r}")

    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, "max_seqlen_q")
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, "max_seqlen_k")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of segments, got "
            f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1} (use empty segments to pad)")


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, max_seqlen, max_name: str) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{name} must be a 1-D integer tensor of prefix sums starting at 0")
    if cu.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 (or int64), got {cu.dtype}")
    try:
        max_seqlen = operator.index(max_seqlen)  # int, numpy int or 0-dim int tensor
    except TypeError:
        raise ValueError(f"{max_name} must be a non-negative int, got {max_seqlen!r}") from None
    if max_seqlen < 0:
        raise ValueError(f"{max_name} must be a non-negative int, got {max_seqlen}")
    if _checked_cu_seqlens.get(cu) == (cu._version, total, max_seqlen):
        return
    vals = cu.tolist()
    if vals[0] != 0:
        raise ValueError(f"{name} must start at 0, got {vals[0]}")
    if vals[-1] != total:
        raise ValueError(f"{name} must end at the token count {total}, got {vals[-1]}")
    lens = [b - a for a, b in zip(vals[:-1], vals[1:])]
    if any(x < 0 for x in lens):
        i = next(i for i, x in enumerate(lens) if x < 0)
        raise ValueError(f"{name} must be non-decreasing; it falls at index {i + 1} ({vals[i]} -> {vals[i + 1]})")
    longest = max(lens, default=0)
    if longest > max_seqlen:
        raise ValueError(f"{max_name} ({max_seqlen}) is smaller than the longest segment in {name} ({longest})")
    _checked_cu_seqlens[cu] = (cu._version, total, max_seqlen)


def check_partials(outs, lses) -> None:
    if not isinstance(outs, (list, tuple)) or not isinstance(lses, (list, tuple)) or len(outs) == 0:
        raise ValueError("outs and lses must be non-empty lists of partial results")
    if len(outs) != len(lses):
        raise ValueError(f"outs and lses must have the same length, got {len(outs)} and {len(lses)}")
    shape = outs[0].shape
    if len(shape) != 3:
        raise ValueError(f"outs[0] must be [tokens, heads, head_dim], got {tuple(shape)}")
    for i, (o, l) in enumerate(zip(outs, lses)):
        if o.shape != shape:
            raise ValueError(f"outs[{i}] has shape {tuple(o.shape)}, expected {tuple(shape)} like outs[0]")
        if l.shape != (shape[1], shape[0]):
            raise ValueError(f"lses[{i}] must be [heads, tokens] = {(shape[1], shape[0])}, got {tuple(l.shape)}")
        if not l.is_floating_point() or l.dtype in (torch.float16, torch.bfloat16):
            raise ValueError(f"lses[{i}] must be float32 or float64, got {l.dtype}")
