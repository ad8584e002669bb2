"""The kernels' tile table (distca_kernels/flash_attn/tile_order.py): every tile once, heaviest
first, and built once per cu_seqlens pair while neither tensor changes."""
from __future__ import annotations

import weakref

import pytest
import torch

from distca_kernels.flash_attn.tile_order import _build, tile_schedule


@pytest.mark.parametrize("rows_are_queries", [True, False])
def test_every_tile_once_heaviest_first(rows_are_queries):
    lens = [5, 300, 10, 129, 64]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    block = 64
    table = tile_schedule(cu, cu, sum(lens), block, True, rows_are_queries)
    real = [(int(s), int(t)) for s, t in table.tolist() if s >= 0]
    want = [(s, t) for s, n in enumerate(lens) for t in range(-(-n // block))]
    assert sorted(real) == sorted(want)
    if rows_are_queries:  # a query tile's work grows with its last query's position
        work = [min(lens[s], (t + 1) * block) for s, t in real]
        assert work == sorted(work, reverse=True)


def test_built_once_per_pair_and_rebuilt_when_either_changes():
    cu_q = torch.tensor([0, 100, 164], dtype=torch.int32)
    cu_k = torch.tensor([0, 100, 164], dtype=torch.int32)
    first = tile_schedule(cu_q, cu_k, 164, 64, True, True)
    assert tile_schedule(cu_q, cu_k, 164, 64, True, True) is first
    assert tile_schedule(cu_q, cu_k, 164, 32, True, True) is not first  # other shape arguments
    other = tile_schedule(cu_q, cu_k.clone(), 164, 64, True, True)  # equal values, other tensor
    assert other is not first and torch.equal(other, first)
    cu_k[1] = 120  # written in place: its version counter moves
    changed = tile_schedule(cu_q, cu_k, 164, 64, True, True)
    assert changed is not first
    assert torch.equal(changed, _build(cu_q, cu_k, 164, 64, True, True))


def test_the_memo_keeps_no_tensor_alive():
    cu = torch.tensor([0, 7, 70], dtype=torch.int32)
    tile_schedule(cu, cu, 70, 16, True, False)  # cu_cols is cu_rows: no self-reference kept
    ref = weakref.ref(cu)
    del cu  # freed by its reference count alone, not left to the cycle collector
    assert ref() is None
