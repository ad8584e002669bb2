"""Tile sizes and launch settings for the attention kernels, per head dim and dtype.

Fixed tables instead of `triton.autotune`: in a data-parallel trainer every rank must run the
same kernel (autotuning per rank can pick different tiles and so different rounding), and the
first training step should not spend seconds timing candidates. The GPU entries come from the
sweep in `benchmarks/attention.py` (see benchmarks/results/attention_h100.json); the
interpreter entries are deliberately small so that CPU tests with sequences of a few dozen
tokens still cross several tiles, partial tiles included.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


@dataclass(frozen=True)
class TileConfig:
    """One kernel's launch: rows per program, columns per inner step, warps, pipeline depth."""

    block_rows: int
    block_cols: int
    num_warps: int = 4
    num_stages: int = 2
    # GPU only: the Triton kernels stream tiles through TMA descriptors; used where the
    # device is sm_90+ and the tensors meet TMA's 16-byte alignment rules
    tma: bool = False
    # Hopper (sm_90) 16-bit: the Gluon kernels that overlap the elementwise work with the
    # tensor cores (gluon_forward.py, gluon_backward.py, gluon_backward_fused.py; they always
    # use TMA and keep two tiles in flight, so num_stages does not apply); elsewhere the
    # Triton kernels run with the other fields. The Gluon forward is warp-specialized: its
    # num_warps is one consumer warpgroup's (4), the other and a loader warp come on top
    gluon: bool = False
    # with gluon: the Triton kernel's tiles where the Gluon one cannot run (another GPU, inputs
    # TMA cannot address); None reuses these fields
    fallback: TileConfig | None = None

    def __post_init__(self):
        # the tile schedule is built once from block_rows, before the kernel is chosen
        if self.fallback is not None and self.fallback.block_rows != self.block_rows:
            raise ValueError(f"TileConfig.fallback.block_rows ({self.fallback.block_rows}) must equal "
                             f"block_rows ({self.block_rows})")


@dataclass(frozen=True)
class AttentionConfigs:
    """forward: (q rows, kv cols); dkdv: (kv rows, q cols); dq: (q rows, kv cols).

    fused: (kv rows, q cols) of the one-kernel Gluon backward that adds dQ into an fp32 buffer
    (gluon_backward_fused.py), whose dQ rounding depends on the order programs add; it runs
    where Gluon can (Hopper, 16-bit, TMA-able inputs), elsewhere the dkdv and dq kernels do.
    None always runs those two, bitwise-reproducible. (A Triton one-kernel backward with
    atomic dQ was removed: no config chose it, and its backward took 1.23-1.34x the Triton
    pair's time on the H100, benchmarks/results/attention_variants_h100.json, "fused" against
    "triton", fwd+bwd minus fwd.)
    """

    forward: TileConfig
    dkdv: TileConfig
    dq: TileConfig
    fused: TileConfig | None = None

    def __post_init__(self):
        if self.fused is not None and not self.fused.gluon:
            raise ValueError(f"AttentionConfigs.fused must be a Gluon config (gluon=True), got {self.fused}: "
                             f"the one-kernel backward exists only in Gluon; use fused=None for the Triton pair")


# Interpreter (CPU): correctness only, small tiles so short test sequences span several.
_INTERPRETER = AttentionConfigs(
    forward=TileConfig(16, 16), dkdv=TileConfig(16, 16), dq=TileConfig(16, 16),
)

# H100 bf16/fp16. Candidates are first screened off-device for register spills with the
# GPU machine's Triton (benchmarks/screen_attention_kernels.py: with Triton 3.6 the pointer-load
# versions of these tiles spill, the TMA ones much less), then timed against each other,
# interleaved over several rounds, by benchmarks/attention_variants.py
# (benchmarks/results/attention_variants_h100.json): the Gluon kernels with 128 x 128 dQ tiles
# were fastest or tied on every case there.
_TRITON_128 = AttentionConfigs(
    forward=TileConfig(128, 128, num_warps=8, num_stages=3, tma=True),
    dkdv=TileConfig(128, 64, num_warps=8, num_stages=3, tma=True),
    dq=TileConfig(128, 64, num_warps=8, num_stages=3, tma=True),
)
_GPU_16BIT = {
    128: AttentionConfigs(
        forward=TileConfig(128, 128, num_warps=4, tma=True, gluon=True, fallback=_TRITON_128.forward),
        dkdv=TileConfig(128, 64, num_warps=8, tma=True, gluon=True, fallback=_TRITON_128.dkdv),
        dq=TileConfig(128, 128, num_warps=8, tma=True, gluon=True, fallback=_TRITON_128.dq),
    ),
    # head dim 64 is not swept: the spill-free screen picks
    64: AttentionConfigs(
        forward=TileConfig(128, 64, num_warps=8, num_stages=3, tma=True),
        dkdv=TileConfig(128, 32, num_warps=8, num_stages=3, tma=True),
        dq=TileConfig(128, 64, num_warps=8, num_stages=3, tma=True),
    ),
}
# Small head dims: register pressure is low, shorter tiles keep more programs in flight.
_GPU_SMALL_DIM = AttentionConfigs(
    forward=TileConfig(64, 64, num_warps=4, num_stages=3),
    dkdv=TileConfig(64, 32, num_warps=4, num_stages=2),
    dq=TileConfig(64, 32, num_warps=4, num_stages=2),
)
# The one-kernel Gluon backward (5 tile matmuls instead of the pair's 7). One program per kv
# tile walks every q head of its GQA group, so the grid shrinks by the group size; the
# warp-specialized kernel still beat the pair at group 4 (docs 64K, GQA 16/4: 9.87 against
# 10.31 ms, benchmarks/results/attention_variants_ws_h100.json, "gluon-fused" against
# "gluon-dq128"; the lockstep kernel before it lost there, attention_variants_fused_h100.json).
# Larger groups are not measured and keep the pair.
# Built once here, not per call: select_configs runs on every attention call of every layer.
_GPU_16BIT_FUSED = {128: replace(_GPU_16BIT[128], fused=TileConfig(128, 64, num_warps=8, tma=True, gluon=True))}
FUSED_MAX_GROUP = 4

# fp32 on the GPU runs the dots in full fp32 precision: halve the tiles to fit shared memory.
_GPU_FP32 = AttentionConfigs(
    forward=TileConfig(64, 32, num_warps=4, num_stages=2),
    dkdv=TileConfig(64, 32, num_warps=4, num_stages=2),
    dq=TileConfig(64, 32, num_warps=4, num_stages=2),
)


def select_configs(head_dim: int, dtype: torch.dtype, interpret: bool, group: int = 1,
                   deterministic: bool = True) -> AttentionConfigs:
    """The configs for one call; group = q heads per kv head. deterministic=False allows the
    fused backward (dQ added in program order) where it measured faster."""
    if interpret:
        return _INTERPRETER
    if dtype == torch.float32:
        return _GPU_FP32
    if not deterministic and group <= FUSED_MAX_GROUP and head_dim in _GPU_16BIT_FUSED:
        return _GPU_16BIT_FUSED[head_dim]
    if head_dim in _GPU_16BIT:
        return _GPU_16BIT[head_dim]
    return _GPU_SMALL_DIM
