"""The backward's indexed copy (row_sums.py): taken only where the plan repeats no row, and
then bitwise what index_add_ gives; the flags the layouts carry match their index tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distca.data.distributions import sample_doc_lengths
from parallel.cad.dispatch import build_layout, transfers
from parallel.cad.planner import plan, split_halves
from parallel.cad.row_sums import add_rows_into_zeros, no_repeats
from parallel.cad.tasks import CostModel, contiguous_pieces


def test_copy_equals_index_add_where_rows_do_not_repeat():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(7, 5, generator=g).to(torch.bfloat16)
    index = torch.tensor([9, 0, 3, 4, 11, 2, 6])
    want = torch.zeros(12, 5, dtype=torch.bfloat16).index_add_(0, index, src)
    got = add_rows_into_zeros(torch.zeros(12, 5, dtype=torch.bfloat16), index, src, unique=True)
    assert torch.equal(got, want)


def test_repeated_rows_are_summed():
    src = torch.arange(8, dtype=torch.float32).view(4, 2)
    index = torch.tensor([1, 3, 1, 0])
    got = add_rows_into_zeros(torch.zeros(4, 2), index, src, unique=no_repeats(index.numpy()))
    assert torch.equal(got[1], src[0] + src[2])
    assert no_repeats(np.array([5, 2, 7])) and no_repeats(np.zeros(1, np.int64))
    assert not no_repeats(np.array([5, 2, 5]))


def _unique(t: torch.Tensor) -> bool:
    return t.unique().numel() == t.numel()


# (dp ranks, cp, tokens, mix, seed, halves, both): `both`, the batch has repeats (a key to two
# servers, a key in two kernel segments) and rows that do not repeat, so both paths are checked
@pytest.mark.parametrize("dp,cp,tokens,mix,seed,halves,both", [
    (1, 1, 512, "pretrain", 0, False, False), (3, 1, 1024, "longctx", 1, True, False),
    (2, 1, 1024, "pretrain", 2, False, True), (2, 2, 1024, "pretrain", 2, True, True),
    (5, 1, 1024, "longctx", 3, False, False)])
def test_layout_flags_match_their_indices(dp, cp, tokens, mix, seed, halves, both):
    rng = np.random.default_rng(seed)
    pieces = contiguous_pieces([sample_doc_lengths(mix, tokens, rng, max_len=tokens)
                                for _ in range(dp)], cp=cp)
    ranks = dp * cp
    cm = CostModel(table=None)
    p = plan(pieces.tasks(), ranks, cm, tolerance=0.0, block=16)
    groups = [np.ones(len(p.parts), bool)]
    if halves:
        half = split_halves(p, cm, 16)
        groups = [half == 0, half == 1]
    hq, hkv = 4, 2
    seen = set()
    for me in range(ranks):
        T = int(pieces.length[pieces.rank == me].sum())
        prior, held = None, None
        for g in groups:
            tr = transfers(p.parts.take(g), p.server[g], pieces, held=held)
            L = build_layout(tr, pieces, me, ranks, T, hq, hkv, torch.device("cpu"), prior=prior)
            assert L.send_rows_unique == _unique(L.send_rows)
            assert L.srv_kv_rows_unique == _unique(L.srv_k_rows) == _unique(L.srv_v_rows)
            seen.update({("send", L.send_rows_unique), ("srv", L.srv_kv_rows_unique)})
            prior, held = L, tr
    if both:
        assert {("send", False), ("srv", False), ("srv", True)} <= seen, seen
