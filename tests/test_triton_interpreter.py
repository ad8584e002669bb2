"""Runs the Triton interpreter tests of every kernel op (flash attention, lightning attention,
linear + cross-entropy, RMSNorm, SwiGLU, RoPE)
in one fresh process started with TRITON_INTERPRET=1 (see fresh_process.py for why)."""
import os

import pytest

from tests.fresh_process import run_test_files_in_fresh_process

INTERPRETER_TESTS = ["test_flash_attn_interpreter.py", "test_lightning_attn_interpret.py",
                     "test_linear_ce_interpret.py", "test_rms_norm_interpret.py",
                     "test_swiglu_interpret.py", "test_rope_interpret.py"]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already interpreting")
def test_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    run_test_files_in_fresh_process(INTERPRETER_TESTS, TRITON_INTERPRET="1")
