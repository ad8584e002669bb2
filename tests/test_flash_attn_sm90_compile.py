"""The GPU-only paths compile for sm_90 without a GPU.

CI has no GPU, and the interpreter runs the Triton pointer-load paths only; compiling the TMA
variants and the Gluon kernels for Hopper here (Triton's bundled ptxas) catches a kernel edit
that breaks them before it reaches the GPU machine. Numerics of those paths are tested on the
GPU (test_flash_attn_gpu.py).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from distca_kernels.flash_attn.sm90_compile import (dkdv_source, dq_source, forward_source,  # noqa: E402
                                                    gluon_source, resources)
from distca_kernels.flash_attn.block_config import TileConfig, select_configs  # noqa: E402

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90


@pytest.mark.parametrize("kernel", ["forward", "dkdv", "dq"])
def test_tma_variant_compiles_for_sm90(kernel):
    src = {
        "forward": lambda: forward_source("bf16", 128, 128, 128, True),
        "dkdv": lambda: dkdv_source("bf16", 128, 128, 64, True, group=2),
        "dq": lambda: dq_source("bf16", 128, 128, 64, True),
    }[kernel]()
    res = resources(src, num_warps=8, num_stages=3)
    assert res["tma_loads"] > 0, res  # the descriptors really are used
    assert res["wgmma"] > 0, res


@pytest.mark.parametrize("kernel", ["forward", "dkdv", "dq", "fused"])
def test_default_gluon_kernels_compile_for_sm90(kernel):
    cfg = getattr(select_configs(128, torch.bfloat16, interpret=False, deterministic=False), kernel)
    assert cfg.gluon
    src = gluon_source(kernel, "bf16", 128, cfg.block_rows, cfg.block_cols, cfg.num_warps, group=2)
    res = resources(src, num_warps=cfg.num_warps, num_stages=1)
    assert res["tma_loads"] > 0 and res["wgmma"] > 0, res
    assert res["smem"] <= SMEM_LIMIT, res
    # the point of these kernels: a wgmma waited for while the next one is still in flight
    assert res["wgmma_wait_one"] > 0, res
    # a few spilled registers at most, no spilled tiles. The fused kernel's consumers sit at
    # their 240-register budget: 0 bytes of stack with the GPU machine's Triton 3.6, 88 with CI's 3.9
    assert res["stack"] <= (128 if kernel == "fused" else 64), res
    if kernel in ("forward", "fused"):
        # warp-specialized: the consumer warpgroups take 240 registers, the loader warp 24
        assert {24, 240} <= set(res["setmaxnreg"]), res
    if kernel == "fused":
        assert res["tma_reduce"] > 0, res  # dQ leaves by TMA reduce-adds, not scalar atomics
        assert res["scalar_atomics"] == 0, res


@pytest.mark.parametrize("kernel", ["forward", "dkdv", "dq"])
def test_triton_fallback_tiles_fit_without_tma(kernel):
    """Where Gluon cannot run (inputs TMA cannot address), the default configs' fallback tiles
    must build as pointer-load Triton kernels: a tile that overflows shared memory would turn a
    misaligned input into a launch failure."""
    cfg = getattr(select_configs(128, torch.bfloat16, interpret=False), kernel)
    tiles = cfg.fallback or cfg
    make = {"forward": forward_source, "dkdv": dkdv_source, "dq": dq_source}[kernel]
    res = resources(make("bf16", 128, tiles.block_rows, tiles.block_cols, False), tiles.num_warps, tiles.num_stages)
    assert res["smem"] <= SMEM_LIMIT, res


def test_fallback_tiles_must_share_the_schedule():
    with pytest.raises(ValueError, match="fallback.block_rows"):
        TileConfig(128, 128, gluon=True, fallback=TileConfig(64, 64))
