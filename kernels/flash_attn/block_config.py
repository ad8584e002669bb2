"""Tile sizes and launch settings for the three attention kernels, per head dim and dtype.

Fixed tables instead of `triton.autotune`: in a data-parallel trainer every rank must run the
same kernel (autotuning per rank can pick different tiles and so different rounding), and the
first training step should not spend seconds timing candidates. The GPU entries come from the
sweep in `benchmarks/attention.py` (see benchmarks/results/attention_h100.json); the
interpreter entries are deliberately small so that CPU tests with sequences of a few dozen
tokens still cross several tiles, partial tiles included.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


@dataclass(frozen=True)
class TileConfig:
    """One kernel's launch: rows per program, columns per inner step, warps, pipeline depth."""

    block_rows: int
    block_cols: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class AttentionConfigs:
    """forward: (q rows, kv cols); dkdv: (kv rows, q cols); dq: (q rows, kv cols)."""

    forward: TileConfig
    dkdv: TileConfig
    dq: TileConfig


# Interpreter (CPU): correctness only, small tiles so short test sequences span several.
_INTERPRETER = AttentionConfigs(
    forward=TileConfig(16, 16), dkdv=TileConfig(16, 16), dq=TileConfig(16, 16),
)

# H100 bf16/fp16. Candidates were first screened for register spills by compiling for sm_90
# off-device (cuobjdump resource usage); the sweep in benchmarks/attention.py picks among
# them by time on causal 16K. Head dim 64 was not swept: it uses the spill-free screen pick.
_GPU_16BIT = {
    # sweep on H100 (2026-11-23, causal 16K x 4, 16 heads): forward 128x128 432 TFLOP/s vs
    # 128x64 413; whole backward 31.0 ms with dkdv 128x64 vs 33.3 with 128x32, dq 128x64
    # 31.7 vs 32.5 with 128x32 (benchmarks/results/attention_h100.json, "sweep")
    128: AttentionConfigs(
        forward=TileConfig(128, 128, num_warps=8, num_stages=3),
        dkdv=TileConfig(128, 64, num_warps=8, num_stages=3),
        dq=TileConfig(128, 64, num_warps=8, num_stages=3),
    ),
    64: AttentionConfigs(
        forward=TileConfig(128, 64, num_warps=8, num_stages=3),
        dkdv=TileConfig(128, 32, num_warps=8, num_stages=3),
        dq=TileConfig(128, 64, num_warps=8, num_stages=3),
    ),
}
# Small head dims: register pressure is low, shorter tiles keep more programs in flight.
_GPU_SMALL_DIM = AttentionConfigs(
    forward=TileConfig(64, 64, num_warps=4, num_stages=3),
    dkdv=TileConfig(64, 32, num_warps=4, num_stages=2),
    dq=TileConfig(64, 32, num_warps=4, num_stages=2),
)
# fp32 on the GPU runs the dots in full fp32 precision: halve the tiles to fit shared memory.
_GPU_FP32 = AttentionConfigs(
    forward=TileConfig(64, 32, num_warps=4, num_stages=2),
    dkdv=TileConfig(64, 32, num_warps=4, num_stages=2),
    dq=TileConfig(64, 32, num_warps=4, num_stages=2),
)


def select_configs(head_dim: int, dtype: torch.dtype, interpret: bool) -> AttentionConfigs:
    if interpret:
        return _INTERPRETER
    if dtype == torch.float32:
        return _GPU_FP32
    if head_dim in _GPU_16BIT:
        return _GPU_16BIT[head_dim]
    return _GPU_SMALL_DIM
