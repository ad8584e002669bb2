"""Runs the Triton interpreter tests of every kernel op (flash attention, lightning attention,
linear + cross-entropy, RMSNorm, SwiGLU, RoPE)
in one fresh process started with TRITON_INTERPRET=1 (see fresh_process.py for why). Those
modules are not collected in other sessions (conftest.py); this test's line in the summary
says how many ran here."""
import os

import pytest

from tests.fresh_process import INTERPRETER_TESTS, run_test_files_in_fresh_process


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already interpreting")
def test_kernels_under_the_interpreter(record_property):
    pytest.importorskip("triton")
    summary = run_test_files_in_fresh_process(INTERPRETER_TESTS, TRITON_INTERPRET="1")
    record_property("fresh_process_summary", f"Triton interpreter tests ({len(INTERPRETER_TESTS)} modules, "
                                             f"run by tests/test_triton_interpreter.py in a fresh "
                                             f"TRITON_INTERPRET=1 process): {summary}")
