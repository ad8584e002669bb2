"""How every op in distca_kernels/ picks its path and loads its Triton code: one convention.

Path (`triton_mode`): CUDA tensors of a dtype the op's kernels take run the Triton kernels;
CPU fp32/fp16 tensors run the same kernels in Triton's interpreter when TRITON_INTERPRET=1
is set *at call time* (how kernels are tested without a GPU; the interpreter's bf16 dots are
wrong, so CPU bf16 is left out); everything else, fp64 included, takes the op's torch
reference.

Loading (`load_kernels`): `@triton.jit` decides at decoration time whether it builds a GPU
kernel or an interpreter function, from triton's `interpret` knob (TRITON_INTERPRET unless
set in code) as it is *then*. A test suite imports triton and this package long before a
test sets the variable, so instead of relying on import order the kernel files are executed
here, once per mode, as private module copies, with the knob set to the wanted mode while
they are decorated, and put back after; the environment is left as it was (kernel files load
their own helper files the same way, with `interpreter_requested()`, which then reports the
mode being built). The copies are cached for the process. Triton's own jit helpers (tl.zeros,
tl.cdiv, ...) are built when triton is imported, in the mode of that moment: interpreting
therefore needs TRITON_INTERPRET=1 before triton's first import (tests run the interpreter in
a fresh process started that way: tests/test_triton_interpreter.py).
"""
from __future__ import annotations

import contextlib
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


_building = threading.local()  # the mode of the kernel file being decorated on this thread


def interpreter_requested() -> bool:
    """The interpreter is wanted: the mode being built while a kernel file is decorated,
    else TRITON_INTERPRET=1 as set by the user."""
    mode = getattr(_building, "interpret", None)
    if mode is not None:
        return mode
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
    """The kernel module `module` (dotted, under distca_kernels/, e.g. "distca_kernels.flash_attn.
    triton_forward") built for the given mode."""
    parts = module.split(".")
    path = _ROOT.joinpath(*parts[1:]).with_suffix(".py")
    if parts[0] != "distca_kernels" or not path.is_file():
        raise ValueError(f"{module!r} is not a kernel module under distca_kernels/")
    key = (module, interpret)
    with _lock:
        if key not in _cache:
            _cache[key] = _exec_module(module, path, interpret)
        return _cache[key]


def _exec_module(module: str, path: Path, interpret: bool) -> ModuleType:
    mode = "interpreted" if interpret else "compiled"
    spec = importlib.util.spec_from_file_location(f"{module}__{mode}", path)
    copy = importlib.util.module_from_spec(spec)
    outer = getattr(_building, "interpret", None)
    _building.interpret = interpret
    try:
        with _jit_mode(interpret):
            spec.loader.exec_module(copy)
    finally:
        _building.interpret = outer
    return copy


@contextlib.contextmanager
def _jit_mode(interpret: bool):
    """triton.jit builds interpreter functions iff `interpret`, for the duration: triton's
    runtime knob, set and put back, and TRITON_INTERPRET, which setting the knob also writes,
    restored to what it was (under the loader's lock, so only this thread loads meanwhile)."""
    import triton

    runtime = triton.knobs.runtime
    missing = object()
    knob = runtime.__dict__.get("interpret", missing)  # an explicit setting, else env-driven
    env = os.environ.get("TRITON_INTERPRET")
    runtime.interpret = interpret
    try:
        yield
    finally:
        if knob is missing:
            del runtime.interpret
        else:
            runtime.interpret = knob
        if env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = env
