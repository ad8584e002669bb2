"""Autograd wrapper and launchers for the varlen attention kernels (Triton; Gluon on Hopper).

Inputs reaching this module are already validated (see validation.py): 3-D q/k/v with unit
stride on the head dim, int32 cu_seqlens on q's device, a supported head dim.
"""
from __future__ import annotations

import functools
import math

import torch

from distca_kernels.flash_attn.block_config import AttentionConfigs, select_configs
from distca_kernels.flash_attn.tile_order import tile_schedule
from distca_kernels.triton_loader import load_kernels

LOG2E = 1.4426950408889634


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (the tensor cores' tf32 would cost ~3 digits)
    return "ieee" if dtype == torch.float32 else "tf32"


def _tma_usable(interpret: bool, *tensors: torch.Tensor) -> bool:
    """TMA needs sm_90+, 16-byte aligned bases and strides, and a unit-stride last dim."""
    if interpret or not tensors[0].is_cuda or torch.cuda.get_device_capability(tensors[0].device)[0] < 9:
        return False
    if tensors[0].shape[0] > 2 ** 30:  # segment descriptors address rows below 2**30
        return False
    for t in tensors:
        size = t.element_size()
        if t.numel() == 0 or t.data_ptr() % 16 or t.stride(-1) != 1 or any(st * size % 16 for st in t.stride()[:-1]):
            return False
    return True


def _triton_tiles(cfg):
    """The tiles the Triton kernel runs where a Gluon config could not (see TileConfig.fallback)."""
    return cfg.fallback if cfg.gluon and cfg.fallback is not None else cfg


@functools.cache
def _gluon_available() -> bool:
    """Triton releases before Gluon's Hopper API (3.5) run the Triton kernels instead."""
    try:
        from triton.experimental.gluon.language.nvidia.hopper import warpgroup_mma_wait  # noqa: F401
    except ImportError:
        return False
    return True


def _gluon_usable(interpret: bool, *tensors: torch.Tensor) -> bool:
    """The Gluon kernels are written for Hopper's wgmma: sm_90 exactly, 16-bit inputs, TMA-able."""
    return (_tma_usable(interpret, *tensors) and torch.cuda.get_device_capability(tensors[0].device)[0] == 9
            and tensors[0].dtype in (torch.bfloat16, torch.float16) and _gluon_available())


def _gluon_forward(q, k, v, o, lse, cu_q, cu_k, schedule, softmax_scale, causal, cfg):
    from distca_kernels.flash_attn.gluon_forward import gluon_attention_forward_kernel as kernel
    from distca_kernels.flash_attn.gluon_tma import segment_descriptor

    q_rows = cfg.block_rows // 2  # each consumer warpgroup loads and stores its own half of the q tile
    hq, hkv = q.shape[1], k.shape[1]
    kernel[(schedule.shape[0] * hq,)](
        segment_descriptor(q, q_rows), segment_descriptor(k, cfg.block_cols),
        segment_descriptor(v, cfg.block_cols), segment_descriptor(o, q_rows), lse,
        cu_q, cu_k, schedule, softmax_scale * LOG2E, lse.stride(0), schedule.shape[0], hq // hkv,
        HEAD_DIM=q.shape[2], BLOCK_M=cfg.block_rows, BLOCK_N=cfg.block_cols, CAUSAL=causal,
        num_warps=cfg.num_warps,
    )


def _tile_sources(cfg, interpret: bool, *boxes: tuple[torch.Tensor, int]):
    """(use_tma, sources) for a kernel's streamed tensors, given as (tensor, box rows) pairs:
    segment descriptors when cfg.tma is set and TMA can serve all of them, else the tensors."""
    tensors = tuple(t for t, _ in boxes)
    if not (cfg.tma and _tma_usable(interpret, *tensors)):
        return False, tensors
    make = load_kernels("distca_kernels.flash_attn.segment_tma", False).segment_descriptor
    return True, tuple(make(t, rows) for t, rows in boxes)


def attention_forward(q, k, v, cu_q, cu_k, softmax_scale: float, causal: bool,
                      configs: AttentionConfigs, interpret: bool):
    """Returns o, lse and the q-tile schedule (which dq can reuse when its tiles match)."""
    kernels = load_kernels("distca_kernels.flash_attn.triton_forward", interpret)
    total_q, hq, d = q.shape
    hkv = k.shape[1]
    o = torch.empty_like(q)
    lse = torch.empty((hq, total_q), dtype=torch.float32, device=q.device)
    cfg = configs.forward
    schedule = tile_schedule(cu_q, cu_k, total_q, cfg.block_rows, causal, rows_are_queries=True)
    grid = (schedule.shape[0] * hq,)
    if grid[0] == 0:
        return o, lse, schedule
    if cfg.gluon and _gluon_usable(interpret, q, k, v, o):
        _gluon_forward(q, k, v, o, lse, cu_q, cu_k, schedule, softmax_scale, causal, cfg)
        return o, lse, schedule
    cfg = _triton_tiles(cfg)
    use_tma, descs = _tile_sources(cfg, interpret, (q, cfg.block_rows), (k, cfg.block_cols), (v, cfg.block_cols),
                                   (o, cfg.block_rows))
    kernels.attention_forward_kernel[grid](
        q, k, v, o, lse, *descs, cu_q, cu_k, schedule,
        softmax_scale * LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        o.stride(0), o.stride(1), lse.stride(0),
        schedule.shape[0],
        group=hq // hkv, HEAD_DIM=d, BLOCK_M=cfg.block_rows, BLOCK_N=cfg.block_cols,
        CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype), USE_TMA=use_tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return o, lse, schedule


def attention_backward(do, dlse, q, k, v, o, lse, cu_q, cu_k, softmax_scale: float, causal: bool,
                       configs: AttentionConfigs, interpret: bool, forward_schedule=None):
    """dq, dk, dv: the dK/dV and dQ kernels that each recompute P (deterministic), or, when
    configs.fused is set and Gluon can run, the one Gluon kernel that adds dQ into an fp32
    buffer."""
    kernels = load_kernels("distca_kernels.flash_attn.triton_backward", interpret)
    total_q, hq, d = q.shape
    total_k, hkv, _ = k.shape
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if total_q == 0 or total_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if do is None:  # only lse was used downstream
        do = torch.zeros_like(o)
    do = do.contiguous() if do.stride(-1) != 1 else do
    delta = torch.empty_like(lse)
    has_dlse = dlse is not None
    dlse_arg = dlse.contiguous() if has_dlse else delta  # placeholder pointer, never read
    block_t = 64
    kernels.attention_backward_delta_kernel[(math.ceil(total_q / block_t), hq)](
        o, do, dlse_arg, delta, total_q,
        o.stride(0), o.stride(1), do.stride(0), do.stride(1), dlse_arg.stride(0), delta.stride(0),
        HEAD_DIM=d, BLOCK_T=block_t, HAS_DLSE=has_dlse,
    )

    common = dict(HEAD_DIM=d, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype))
    scale2 = softmax_scale * LOG2E

    if configs.fused is not None and _gluon_usable(interpret, q, k, v, do, dk, dv):
        _fused_backward(do, q, k, v, lse, delta, dq, dk, dv, cu_q, cu_k, softmax_scale, causal, configs.fused)
        return dq, dk, dv

    cfg = configs.dkdv
    schedule = tile_schedule(cu_k, cu_q, total_k, cfg.block_rows, causal, rows_are_queries=False)
    if cfg.gluon and _gluon_usable(interpret, q, k, v, do, dk, dv):
        from distca_kernels.flash_attn.gluon_backward import gluon_attention_backward_dkdv_kernel
        from distca_kernels.flash_attn.gluon_tma import segment_descriptor as desc
        rows, cols = cfg.block_rows, cfg.block_cols
        gluon_attention_backward_dkdv_kernel[(schedule.shape[0] * hkv,)](
            desc(k, rows), desc(v, rows), desc(q, cols), desc(do, cols), desc(dk, rows), desc(dv, rows),
            lse, delta, cu_q, cu_k, schedule, scale2, softmax_scale, lse.stride(0), schedule.shape[0],
            GROUP=hq // hkv, HEAD_DIM=d, BLOCK_N=rows, BLOCK_M=cols, CAUSAL=causal, num_warps=cfg.num_warps,
        )
    else:
        _triton_dkdv(kernels, _triton_tiles(cfg), interpret, q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, schedule,
                     scale2, softmax_scale, hq, hkv, common)

    cfg = configs.dq
    if forward_schedule is not None and cfg.block_rows == configs.forward.block_rows:
        schedule = forward_schedule  # same q tiles, same order: skip rebuilding it
    else:
        schedule = tile_schedule(cu_q, cu_k, total_q, cfg.block_rows, causal, rows_are_queries=True)
    if cfg.gluon and _gluon_usable(interpret, q, k, v, do, dq):
        from distca_kernels.flash_attn.gluon_backward import gluon_attention_backward_dq_kernel
        from distca_kernels.flash_attn.gluon_tma import segment_descriptor as desc
        rows, cols = cfg.block_rows, cfg.block_cols
        gluon_attention_backward_dq_kernel[(schedule.shape[0] * hq,)](
            desc(q, rows), desc(do, rows), desc(k, cols), desc(v, cols), desc(dq, rows),
            lse, delta, cu_q, cu_k, schedule, scale2, softmax_scale, lse.stride(0), schedule.shape[0], hq // hkv,
            HEAD_DIM=d, BLOCK_M=rows, BLOCK_N=cols, CAUSAL=causal, num_warps=cfg.num_warps,
        )
    else:
        _triton_dq(kernels, _triton_tiles(cfg), interpret, q, k, v, do, lse, delta, dq, cu_q, cu_k, schedule,
                   scale2, softmax_scale, hq, hkv, common)
    return dq, dk, dv


def _triton_dkdv(kernels, cfg, interpret, q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, schedule,
                 scale2, softmax_scale, hq, hkv, common):
    use_tma, descs = _tile_sources(cfg, interpret, (q, cfg.block_cols), (do, cfg.block_cols))
    kernels.attention_backward_dkdv_kernel[(schedule.shape[0] * hkv,)](
        q, k, v, do, lse, delta, dk, dv, *descs, cu_q, cu_k, schedule,
        scale2, softmax_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        lse.stride(0), schedule.shape[0],
        GROUP=hq // hkv, BLOCK_N=cfg.block_rows, BLOCK_M=cfg.block_cols, USE_TMA=use_tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )


def _triton_dq(kernels, cfg, interpret, q, k, v, do, lse, delta, dq, cu_q, cu_k, schedule,
               scale2, softmax_scale, hq, hkv, common):
    use_tma, descs = _tile_sources(cfg, interpret, (k, cfg.block_cols), (v, cfg.block_cols))
    kernels.attention_backward_dq_kernel[(schedule.shape[0] * hq,)](
        q, k, v, do, lse, delta, dq, *descs, cu_q, cu_k, schedule,
        scale2, softmax_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        lse.stride(0), schedule.shape[0],
        group=hq // hkv, BLOCK_M=cfg.block_rows, BLOCK_N=cfg.block_cols, USE_TMA=use_tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )


def _fused_backward(do, q, k, v, lse, delta, dq, dk, dv, cu_q, cu_k, softmax_scale, causal, cfg):
    """The one-kernel Gluon backward (the caller checked that Gluon can run): dk, dv written
    directly, dq accumulated in fp32 by TMA reduce-adds, then cast into `dq`."""
    from distca_kernels.flash_attn.gluon_backward_fused import gluon_attention_backward_fused_kernel
    from distca_kernels.flash_attn.gluon_tma import segment_descriptor as desc

    total_q, hq, d = q.shape
    total_k, hkv, _ = k.shape
    dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    schedule = tile_schedule(cu_k, cu_q, total_k, cfg.block_rows, causal, rows_are_queries=False)
    rows, cols = cfg.block_rows, cfg.block_cols
    gluon_attention_backward_fused_kernel[(schedule.shape[0] * hkv,)](
        desc(k, rows), desc(v, rows), desc(q, cols), desc(do, cols), desc(dk, rows), desc(dv, rows),
        desc(dq_acc, cols), lse, delta, cu_q, cu_k, schedule, softmax_scale * LOG2E, softmax_scale,
        lse.stride(0), schedule.shape[0],
        GROUP=hq // hkv, HEAD_DIM=d, BLOCK_N=rows, BLOCK_M=cols, CAUSAL=causal, num_warps=cfg.num_warps,
    )
    dq.copy_(dq_acc)  # the kernel already applied the softmax scale


class TritonVarlenAttention(torch.autograd.Function):
    """o, lse = attention(q, k, v); both outputs differentiable. configs=None picks them by head
    dim, dtype and GQA group; deterministic=False lets that pick the fused backward."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, softmax_scale, causal, interpret, configs, deterministic=True):
        if configs is None:
            configs = select_configs(q.shape[-1], q.dtype, interpret, group=q.shape[1] // k.shape[1],
                                     deterministic=deterministic)
        o, lse, schedule = attention_forward(q, k, v, cu_q, cu_k, softmax_scale, causal, configs, interpret)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k, schedule)
        ctx.softmax_scale, ctx.causal, ctx.interpret, ctx.configs = softmax_scale, causal, interpret, configs
        # an unused lse output should cost nothing in backward, not a zero-filled [H, T] buffer
        ctx.set_materialize_grads(False)
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, cu_q, cu_k, schedule = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, dlse, q, k, v, o, lse, cu_q, cu_k, ctx.softmax_scale,
                                        ctx.causal, ctx.configs, ctx.interpret, schedule)
        return dq, dk, dv, None, None, None, None, None, None, None
