"""How every op in kernels/ picks its path and loads its Triton code: one convention.

Path (`triton_mode`): CUDA tensors of a dtype the op's kernels take run the Triton kernels;
CPU fp32/fp16 tensors run the same kernels in Triton's interpreter when TRITON_INTERPRET=1
is set *at call time* (how kernels are tested without a GPU; the interpreter's bf16 dots are
wrong, so CPU bf16 is left out); everything else, fp64 included, takes the op's torch
reference.

Loading (`load_kernels`): `@triton.jit` decides at decoration time whether it builds a GPU
kernel or an interpreter function, from TRITON_INTERPRET as it is *then*. A test suite
imports triton and this package long before a test sets the variable, so instead of relying
on import order the kernel files are executed here, once per mode, as private module copies,
with the variable set to the wanted mode while they are decorated (kernel files load their
own helper files the same way, with `interpreter_requested()`, which then reports the mode
being built). The copies are cached for the process. Triton's own jit helpers (tl.zeros,
tl.cdiv, ...) are built when triton is imported, in the mode of that moment: interpreting
therefore needs TRITON_INTERPRET=1 before triton's first import (tests run the interpreter in
a fresh process started that way: tests/test_triton_interpreter.py).
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

import torch

_ROOT = Path(__file__).resolve().parent
_cache: dict[tuple[str, bool], ModuleType] = {}
_lock = threading.RLock()  # re-entrant: kernel files load their helpers while being loaded
INTERPRETER_DTYPES = (torch.float16, torch.float32)


def interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_mode(x: torch.Tensor, dtypes) -> tuple[bool, bool]:
    """(run the Triton kernels, in the interpreter) for an input like x; `dtypes` are the
    dtypes the op's kernels take on the GPU."""
    if x.is_cuda:
        return x.dtype in dtypes, False
    if x.device.type == "cpu" and interpreter_requested():
        return x.dtype in dtypes and x.dtype in INTERPRETER_DTYPES, True
    return False, False


def load_kernels(module: str, interpret: bool) -> ModuleType:
    """The kernel module `module` (dotted, under kernels/, e.g. "kernels.flash_attn.
    triton_forward") built for the given mode."""
    parts = module.split(".")
    path = _ROOT.joinpath(*parts[1:]).with_suffix(".py")
    if parts[0] != "kernels" or not path.is_file():
        raise ValueError(f"{module!r} is not a kernel module under kernels/")
    key = (module, interpret)
    with _lock:
        if key not in _cache:
            _cache[key] = _exec_module(module, path, interpret)
        return _cache[key]


def _exec_module(module: str, path: Path, interpret: bool) -> ModuleType:
    mode = "interpreted" if interpret else "compiled"
    spec = importlib.util.spec_from_file_location(f"{module}__{mode}", path)
    copy = importlib.util.module_from_spec(spec)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec.loader.exec_module(copy)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return copy
