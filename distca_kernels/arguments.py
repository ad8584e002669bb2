"""Argument checks every op shares. The ops refuse a bad argument with a ValueError that names
it (never a deep traceback from inside a kernel); these are the checks all of them make."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def require_tensor(name: str, x) -> None:
    """ValueError unless x is a torch.Tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004


def require_float_tensor(name: str, x) -> None:
    """ValueError unless x is a torch.Tensor of a floating dtype the ops take."""
    require_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float16/bfloat16/float32/float64 tensor, got {x.dtype}")
