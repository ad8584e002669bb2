"""Shard layouts: ownership, balance, chunk structure, positions, pieces and permutations."""
from __future__ import annotations

import random

import pytest
import torch

from parallel.context.shard import (LAYOUTS, build_shard, doc_tables, layout_indices,
                                    shard_from_index, stream_permutation)


def _streams():
    rng = random.Random(0)
    out = [[1], [7], [3, 1, 1, 2], [40], [1] * 9]
    for _ in range(6):
        out.append([rng.choice([1, 2, rng.randint(1, 17), rng.randint(1, 60)]) for _ in range(rng.randint(1, 12))])
    return out


CASES = [(lens, n) for lens in _streams() for n in range(1, 9) if sum(lens) >= n]


def _shards(lens, n, layout):
    return [build_shard(lens, r, n, layout) for r in range(n)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_token_owned_once_and_balanced(layout):
    for lens, n in CASES:
        shards = _shards(lens, n, layout)
        allidx = torch.cat([s.index for s in shards])
        assert torch.equal(allidx.sort().values, torch.arange(sum(lens))), (lens, n)
        counts = [s.num_tokens for s in shards]
        assert max(counts) - min(counts) <= 1, (layout, lens, n, counts)  # no padding, balanced


@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions_documents_and_pieces(layout):
    for lens, n in CASES:
        doc_ids, pos = doc_tables(lens)
        starts = torch.cumsum(torch.tensor(lens), 0) - torch.tensor(lens)
        for s in _shards(lens, n, layout):
            assert torch.equal(s.position_ids, pos[s.index]) and torch.equal(s.doc_ids, doc_ids[s.index])
            cu = s.cu_seqlens.tolist()
            assert cu[0] == 0 and cu[-1] == s.num_tokens
            for i, (d, st) in enumerate(zip(s.piece_docs, s.piece_starts)):
                piece = s.index[cu[i]:cu[i + 1]]
                want = torch.arange(st, st + piece.numel()) + starts[d]
                assert torch.equal(piece, want), (layout, lens, n, i)  # consecutive, one document
            # maximal: consecutive pieces are not the continuation of each other
            for i in range(len(cu) - 2):
                assert not (s.piece_docs[i] == s.piece_docs[i + 1]
                            and s.index[cu[i + 1] - 1] + 1 == s.index[cu[i + 1]])


def test_zigzag_holds_chunks_r_and_mirror():
    for lens, n in CASES:
        chunks = torch.tensor_split(torch.arange(sum(lens)), 2 * n)
        for r, s in enumerate(_shards(lens, n, "zigzag")):
            assert torch.equal(s.index, torch.cat([chunks[r], chunks[2 * n - 1 - r]]))


def _head_tail_by_hand(lens, n):
    """The head-tail rule written as plain loops: each document cut into 2n chunks of
    floor(len/2n) tokens, its len % 2n leftover tokens dealt one per rank round-robin
    (heads first, then tails), the dealing continuing from one document to the next."""
    out = [[] for _ in range(n)]
    start, turn = 0, 0
    for length in lens:
        base, rem = divmod(length, 2 * n)
        head, tail = [base] * n, [base] * n
        for j in range(rem):
            (head if j < n else tail)[(turn + j) % n] += 1
        turn = (turn + rem) % n
        sizes = head + tail[::-1]  # chunk c < n is rank c's head, chunk 2n-1-r rank r's tail
        bounds = [start]
        for sz in sizes:
            bounds.append(bounds[-1] + sz)
        for r in range(n):
            out[r] += list(range(bounds[r], bounds[r + 1]))
            out[r] += list(range(bounds[2 * n - 1 - r], bounds[2 * n - r]))
        assert max(sizes) - min(sizes) <= 1
        start += length
    return out


def test_head_tail_splits_every_document_into_2n_chunks():
    for lens, n in CASES:
        want = _head_tail_by_hand(lens, n)
        for r, s in enumerate(_shards(lens, n, "head_tail")):
            assert s.index.tolist() == want[r], (lens, n, r)
            # every document contributes at most two pieces (head, tail) to a rank
            per_doc = torch.bincount(torch.tensor(s.piece_docs, dtype=torch.long), minlength=len(lens))
            assert max(per_doc.tolist(), default=0) <= 2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_permutation_round_trips(layout):
    for lens, n in CASES:
        total = sum(lens)
        x = torch.randn(total, 3)
        labels = torch.arange(total) * 10
        perm, inv = stream_permutation(lens, n, layout)
        shards = _shards(lens, n, layout)
        cat = torch.cat([s.local(x) for s in shards])
        assert torch.equal(cat, x[perm]) and torch.equal(cat[inv], x)
        assert torch.equal(shards[0].inverse_index(), inv)
        back = sum(s.to_global(s.local(x)) for s in shards)
        assert torch.equal(back, x)
        for s in shards:  # inputs, labels and positions move together
            xi, li, pi = s.permute(x, labels, doc_tables(lens)[1])
            assert torch.equal(li, s.index * 10) and torch.equal(pi, s.position_ids)
            assert torch.equal(xi, x[s.index])
            assert [p.index.tolist() for p in s.peers()] == [t.index.tolist() for t in shards]


def test_single_rank_layouts_are_the_stream():
    lens = [5, 1, 9, 3]
    for layout in LAYOUTS:
        s = build_shard(lens, 0, 1, layout)
        assert s.index.tolist() == list(range(18)) and s.cu_seqlens.tolist() == [0, 5, 6, 15, 18]


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="layout"):
        build_shard([4], 0, 1, "diagonal")
    with pytest.raises(ValueError, match="cp_rank"):
        build_shard([4], 2, 2, "zigzag")
    with pytest.raises(ValueError, match="cp_size"):
        build_shard([4], 0, 0, "zigzag")
    with pytest.raises(ValueError, match="doc_lens"):
        build_shard([4, -1], 0, 1, "zigzag")
    odd = shard_from_index([6], torch.tensor([5, 0]), "zigzag", 0, 2)
    with pytest.raises(ValueError, match="build_shard"):
        odd.peers()
    assert layout_indices((4,), 2, "zigzag")[1].tolist() == [1, 2]
