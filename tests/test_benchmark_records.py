"""The GPU benchmarks write their tile configs into JSON records; that must not fail after the
measurements (a nested TileConfig once did, losing a run's results on the GPU machine)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.attention import config_record  # noqa: E402
from distca_kernels.flash_attn.block_config import select_configs  # noqa: E402


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_configs_serialize(head_dim):
    record = json.loads(json.dumps(config_record(select_configs(head_dim, torch.bfloat16, interpret=False))))
    assert set(record) == {"forward", "dkdv", "dq", "fused"}


def test_variant_configs_serialize():
    from benchmarks.attention_variants import variants, variants_names
    configs = variants()
    assert tuple(configs) == variants_names()  # --profile's choices name every variant
    json.dumps({name: config_record(cfg) for name, cfg in configs.items()})


def test_baseline_swap_puts_back_the_current_kernels():
    """attention_vs_baseline.py times an earlier commit's kernels by swapping them in; the
    current ones must be back afterwards, also when a timing raises, or every later 'current'
    measurement would time the baseline."""
    from benchmarks.attention_vs_baseline import Swap
    from distca_kernels.flash_attn import gluon_backward_fused, triton_attention

    def current():
        return triton_attention._gluon_forward, gluon_backward_fused.gluon_attention_backward_fused_kernel

    before = current()
    old_forward, old_fused = object(), object()
    with pytest.raises(RuntimeError):
        with Swap(old_forward, old_fused):
            assert current() == (old_forward, old_fused)
            raise RuntimeError("a timing failed")
    assert current() == before
    with Swap(None, old_fused):  # a baseline with only the backward file keeps the current forward
        assert current() == (before[0], old_fused)
    assert current() == before


def test_cost_profiler_retries_with_fewer_copies_when_out_of_memory(monkeypatch):
    """benchmarks/profile_attention_cost.py sizes a call for an H200; on a smaller card a grid
    point must halve its copies and still be measured, not end the whole profile (it once ran
    an H100 out of memory at its first points)."""
    import benchmarks.profile_attention_cost as prof
    tried = []

    def fake(run, q_len, kv_len, reps, b):
        tried.append(b)
        if b > 5:
            raise torch.OutOfMemoryError("simulated")
        return {"fwd": 1.0, "fwd_bwd": 3.0, "copies": b}

    monkeypatch.setattr(prof, "_time_copies", fake)
    got = prof.time_point(None, 128, 128, 1)
    assert tried[0] == prof.MAX_Q_TOKENS // 128  # the query-token cap bounds the first try
    assert tried == [tried[0] >> i for i in range(len(tried))] and got["copies"] == tried[-1] <= 5
