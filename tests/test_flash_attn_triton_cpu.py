"""Runs `test_flash_attn_interpreter.py` in a fresh process.

Training tests earlier in the suite leave Triton state behind in the pytest process that
makes interpreted kernels fail ("Cannot call @triton.jit'd outside of the scope of a kernel"),
so the interpreter tests get a process of their own, as the lightning kernel's do.
"""
import os

import pytest

from tests.fresh_process import run_test_file_in_fresh_process


@pytest.mark.skipif(os.environ.get("DISTCA_FRESH_PROCESS") == "1", reason="already in the fresh process")
def test_flash_attn_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    run_test_file_in_fresh_process("test_flash_attn_interpreter.py", DISTCA_FRESH_PROCESS="1")
