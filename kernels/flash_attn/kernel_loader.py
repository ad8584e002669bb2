"""Load the Triton kernel modules compiled (GPU) or interpreted (CPU), whatever the import order.

`@triton.jit` decides at decoration time whether it builds a GPU kernel or an interpreter
function, from TRITON_INTERPRET as it is *then*. A test suite imports triton and this package
long before a test sets TRITON_INTERPRET=1, so instead of relying on import order the kernel
files are executed here, once per mode, as private module copies, with the variable set to
the wanted mode while they are decorated. The copies are cached for the process.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

_KERNEL_FILES = ("triton_forward", "triton_backward", "triton_backward_fused", "segment_tma", "tile_ranges")
_cache: dict[tuple[str, bool], ModuleType] = {}
_lock = threading.RLock()  # re-entrant: kernel files load segment_tma while being loaded


def interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def load_kernels(name: str, interpret: bool) -> ModuleType:
    """Return the kernel module `name` (one of _KERNEL_FILES) built for the given mode."""
    if name not in _KERNEL_FILES:
        raise ValueError(f"name must be one of {_KERNEL_FILES}, got {name!r}")
    key = (name, interpret)
    with _lock:
        if key not in _cache:
            _cache[key] = _exec_module(name, interpret)
        return _cache[key]


def _exec_module(name: str, interpret: bool) -> ModuleType:
    path = Path(__file__).with_name(f"{name}.py")
    mode = "interpreted" if interpret else "compiled"
    spec = importlib.util.spec_from_file_location(f"kernels.flash_attn._{name}_{mode}", path)
    module = importlib.util.module_from_spec(spec)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module
