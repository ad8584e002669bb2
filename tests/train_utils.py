"""Helpers for training tests: small configs and running `train` on gloo ranks."""
from __future__ import annotations

from distca.config import compose_config

TINY = ["experiment=tiny", "data.seq_len=64", "data.max_documents=60", "train.global_batch_size=4",
        "logger.progress=false", "checkpoint.save_final=false", "train.warmup_steps=2"]


def tiny_cfg(run_dir, *overrides):
    return compose_config(TINY + [f"run_dir={run_dir}", *overrides])


def losses(history):
    return [m["loss"] for m in history]


def assert_parity(ref, got, step1_rtol=1e-5, rtol=1e-4, label=""):
    assert len(ref) == len(got), (label, len(ref), len(got))
    for i, (a, b) in enumerate(zip(ref, got)):
        tol = step1_rtol if i == 0 else rtol
        assert abs(a - b) <= tol * abs(a), f"{label} step {i + 1}: {a} vs {b} (rel {abs(a - b) / abs(a):.2e})"
