"""train.deterministic: bitwise-reproducible GPU kernels for one training run.

The default attention backward on Hopper adds dQ into an fp32 buffer by reduce-adds from many
programs, so its rounding (and so the run) can differ between two runs of the same step; the
same holds for some torch ops. With train.deterministic=true the run sets torch's global
switch, which flash_attn_varlen_func follows (deterministic=None): it then takes the
two-kernel backward (no atomics; its attention backward took 17-24% longer on the H100,
benchmarks/results/attention_h100.json, "ours_deterministic"). Torch ops that have no
deterministic version warn instead of failing (warn_only), so a run never dies for it.
"""
from __future__ import annotations

import contextlib
import os

import torch


@contextlib.contextmanager
def deterministic_kernels(enabled: bool):
    """Within the block, torch (and our attention) use deterministic kernels if `enabled`; the
    previous setting, and CUBLAS_WORKSPACE_CONFIG, are restored after, so a process that
    trains twice is not left changed."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    # cuBLAS reads this when it creates its handle; without it deterministic matmuls error out.
    # A user's own setting is kept.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
