"""The GPU-only TMA paths compile for sm_90 without a GPU.

CI has no GPU, and the interpreter runs the pointer-load paths only; compiling the TMA
variants for Hopper here (Triton's bundled ptxas) catches a kernel edit that breaks them
before it reaches the GPU machine. Numerics of those paths are tested on the GPU
(test_flash_attn_gpu.py).
"""
from __future__ import annotations

import pytest

pytest.importorskip("triton")

from benchmarks.screen_attention_kernels import (dkdv_source, dq_source, forward_source,  # noqa: E402
                                                 fused_source, resources)


@pytest.mark.parametrize("kernel", ["forward", "dkdv", "dq", "fused"])
def test_tma_variant_compiles_for_sm90(kernel):
    src = {
        "forward": lambda: forward_source("bf16", 128, 128, 128, True),
        "dkdv": lambda: dkdv_source("bf16", 128, 128, 64, True, group=2),
        "dq": lambda: dq_source("bf16", 128, 128, 64, True),
        "fused": lambda: fused_source("bf16", 128, 128, 64, True),
    }[kernel]()
    res = resources(src, num_warps=8, num_stages=3)
    assert res["tma_loads"] > 0, res  # the descriptors really are used
    assert res["wgmma"] > 0, res
    if kernel == "fused":
        assert res["tma_reduce"] > 0, res
