"""Compile the attention kernels for sm_90 without a GPU and report registers, spills, shared
memory and the instructions that matter (TMA, wgmma, atomics), with Triton's bundled ptxas and
cuobjdump. Used by benchmarks/screen_attention_kernels.py (screen tile candidates before
spending device time) and by tests/test_flash_attn_sm90_compile.py (the GPU-only paths still
compile). Register allocation changes between Triton releases: screen with the GPU machine's.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from distca_kernels.triton_loader import load_kernels


def _desc(dtype, rows, d):
    return f"tensordesc<{dtype}[1, 1, {rows}, 1, {d}]>"  # segment_tma.segment_descriptor's box


def forward_source(dtype, d, bm, bn, tma):
    fn = load_kernels("distca_kernels.flash_attn.triton_forward", False).attention_forward_kernel
    ptr = f"*{dtype}"
    sig = dict(Q=ptr, K=ptr, V=ptr, O=ptr, LSE="*fp32",
               Q_DESC=_desc(dtype, bm, d) if tma else ptr,
               K_DESC=_desc(dtype, bn, d) if tma else ptr, V_DESC=_desc(dtype, bn, d) if tma else ptr,
               O_DESC=_desc(dtype, bm, d) if tma else ptr,
               CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32")
    for name in ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                 "stride_ot", "stride_oh", "stride_lse_h", "num_slots", "group"):
        sig[name] = "i32"
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=True, DOT_PRECISION="tf32", USE_TMA=tma)
    sig.update({k: "constexpr" for k in const})
    return ASTSource(fn, sig, const)


def dkdv_source(dtype, d, bn, bm, tma, group=1):
    fn = load_kernels("distca_kernels.flash_attn.triton_backward", False).attention_backward_dkdv_kernel
    ptr = f"*{dtype}"
    sig = dict(Q=ptr, K=ptr, V=ptr, DO=ptr, LSE="*fp32", DELTA="*fp32", DK=ptr, DV=ptr,
               Q_DESC=_desc(dtype, bm, d) if tma else ptr, DO_DESC=_desc(dtype, bm, d) if tma else ptr,
               CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32", softmax_scale="fp32")
    for name in ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                 "stride_dot", "stride_doh", "stride_dkt", "stride_dkh", "stride_dvt", "stride_dvh",
                 "stride_lse_h", "num_slots"):
        sig[name] = "i32"
    const = dict(GROUP=group, HEAD_DIM=d, BLOCK_N=bn, BLOCK_M=bm, CAUSAL=True, DOT_PRECISION="tf32", USE_TMA=tma)
    sig.update({k: "constexpr" for k in const})
    return ASTSource(fn, sig, const)


def dq_source(dtype, d, bm, bn, tma):
    fn = load_kernels("distca_kernels.flash_attn.triton_backward", False).attention_backward_dq_kernel
    ptr = f"*{dtype}"
    sig = dict(Q=ptr, K=ptr, V=ptr, DO=ptr, LSE="*fp32", DELTA="*fp32", DQ=ptr,
               K_DESC=_desc(dtype, bn, d) if tma else ptr, V_DESC=_desc(dtype, bn, d) if tma else ptr,
               CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32", softmax_scale="fp32")
    for name in ("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                 "stride_dot", "stride_doh", "stride_dqt", "stride_dqh", "stride_lse_h", "num_slots", "group"):
        sig[name] = "i32"
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=True, DOT_PRECISION="tf32", USE_TMA=tma)
    sig.update({k: "constexpr" for k in const})
    return ASTSource(fn, sig, const)


def _gluon_desc(dtype, rows, d):
    """A Gluon segment descriptor's signature (its type carries the shared-memory layout)."""
    import torch
    from triton.runtime.jit import mangle_type

    from distca_kernels.flash_attn.gluon_tma import segment_descriptor
    t = torch.empty(8, 1, d, dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype])
    return mangle_type(segment_descriptor(t, rows))


def gluon_source(kind, dtype, d, rows, cols, num_warps, group=1):
    """The Gluon (Hopper) forward, dkdv, dq or fused kernel; rows are what a program owns."""
    from triton.experimental.gluon._runtime import GluonASTSource

    from distca_kernels.flash_attn import gluon_backward, gluon_backward_fused, gluon_forward
    r, c = _gluon_desc(dtype, rows, d), _gluon_desc(dtype, cols, d)
    tail = dict(LSE="*fp32", CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32")
    if kind == "forward":
        fn = gluon_forward.gluon_attention_forward_kernel
        half = _gluon_desc(dtype, rows // 2, d)  # each consumer warpgroup's q/o box
        sig = dict(Q_DESC=half, K_DESC=c, V_DESC=c, O_DESC=half, **tail, stride_lse_h="i32", num_slots="i32",
                   group="i32")
        const = dict(HEAD_DIM=d, BLOCK_M=rows, BLOCK_N=cols, CAUSAL=True, num_warps=num_warps)
    elif kind == "dkdv":
        fn = gluon_backward.gluon_attention_backward_dkdv_kernel
        sig = dict(K_DESC=r, V_DESC=r, Q_DESC=c, DO_DESC=c, DK_DESC=r, DV_DESC=r, LSE="*fp32", DELTA="*fp32",
                   CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32", softmax_scale="fp32",
                   stride_lse_h="i32", num_slots="i32")
        const = dict(GROUP=group, HEAD_DIM=d, BLOCK_N=rows, BLOCK_M=cols, CAUSAL=True, num_warps=num_warps)
    elif kind == "fused":
        fn = gluon_backward_fused.gluon_attention_backward_fused_kernel
        sig = dict(K_DESC=r, V_DESC=r, Q_DESC=c, DO_DESC=c, DK_DESC=r, DV_DESC=r, DQ_DESC=_gluon_desc("fp32", cols, d),
                   LSE="*fp32", DELTA="*fp32", CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32",
                   softmax_scale="fp32", stride_lse_h="i32", num_slots="i32")
        const = dict(GROUP=group, HEAD_DIM=d, BLOCK_N=rows, BLOCK_M=cols, CAUSAL=True, num_warps=num_warps)
    else:
        fn = gluon_backward.gluon_attention_backward_dq_kernel
        sig = dict(Q_DESC=r, DO_DESC=r, K_DESC=c, V_DESC=c, DQ_DESC=r, LSE="*fp32", DELTA="*fp32",
                   CU_Q="*i32", CU_K="*i32", SCHEDULE="*i32", qk_scale_log2="fp32", softmax_scale="fp32",
                   stride_lse_h="i32", num_slots="i32", group="i32")
        const = dict(HEAD_DIM=d, BLOCK_M=rows, BLOCK_N=cols, CAUSAL=True, num_warps=num_warps)
    sig.update({k: "constexpr" for k in const})
    return GluonASTSource(fn, sig, const)


def resources(src, num_warps, num_stages):
    target = GPUTarget("cuda", 90, 32)
    compiled = triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        out = subprocess.run([str(cuobjdump), "-res-usage", path], capture_output=True, text=True).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    stack = int(re.search(r"STACK:(\d+)", out).group(1))  # stack frame: register spills live there
    ptx = compiled.asm["ptx"]
    return dict(regs=regs, stack=stack, smem=compiled.metadata.shared,
                tma_loads=ptx.count("cp.async.bulk.tensor"), tma_reduce=ptx.count("cp.reduce.async.bulk"),
                wgmma=ptx.count("wgmma.mma_async"), wgmma_wait_one=ptx.count("wgmma.wait_group.sync.aligned 1;"),
                scalar_atomics=len(re.findall(r"\bred\.|\batom\.", ptx)),
                # register budgets the warp-specialized kernels' partitions set themselves
                setmaxnreg=sorted({int(n) for n in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+);", ptx)}))
