"""Runs `test_lightning_attn_interpret.py` in a subprocess with TRITON_INTERPRET=1.

Triton decides interpreter-or-GPU when it is first imported, and the rest of the suite imports
it without the variable, so the interpreter tests need a fresh process.
"""
import os

import pytest

from tests.fresh_process import run_test_file_in_fresh_process


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") == "1",
                    reason="already interpreting: the tests run directly in this process")
def test_triton_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    run_test_file_in_fresh_process("test_lightning_attn_interpret.py", TRITON_INTERPRET="1")
