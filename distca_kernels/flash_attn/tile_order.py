"""Which (segment, tile) each program of a varlen attention kernel works on, heaviest first.

Packed batches mix a few long documents with many short ones, so a grid of
(max tiles per segment) x (segments) would be mostly empty programs. Instead every program
slot maps to one real tile through a small table built on the device with torch ops (no host
sync: the table's length is bounded from shapes alone, and unused slots are marked -1).

Under a causal mask tiles differ in cost by up to the segment length, and the GPU hands out
programs in launch order, so the table is sorted by estimated work, largest first (longest
processing time first): the expensive tiles start in the first wave instead of straggling
at the end.

Program order in the kernels: program id -> (kv head, slot, q head within the kv head's group),
the q heads of a group fastest. The programs in flight at any moment then work on one or two
kv heads, so the K/V tiles they all stream (or, for dK/dV, the q/dO tiles) are read from HBM
once and served from L2 after that. The earlier order, heads fastest, put every head's
heaviest tile in the first wave: its 132 programs streamed 64 different heads' K/V, far more
than L2 holds, and the forward ran at 89% of HBM bandwidth with a 10% L2 hit rate (Nsight
Compute on the H100, causal 16K x 4, 16 heads). Within a kv head, slots still go heaviest first.

Every layer of a step calls the kernels with the same cu_seqlens tensors, and building the
table is about 20 small launches (about 1 ms of host time per call on the H100 machine: with
nano-batches, 64 calls and 62 ms of a 16K step's host time, which there bounds the step), so
the table is kept on the cu_rows tensor itself: it lives exactly as long as the tensor, and a
hit needs the same cu_cols object and neither tensor written since (their version counters).
"""
from __future__ import annotations

import weakref

import torch

_MEMO = "_distca_tile_schedules"


def tile_schedule(
    cu_rows: torch.Tensor,
    cu_cols: torch.Tensor,
    total_rows: int,
    block: int,
    causal: bool,
    rows_are_queries: bool,
) -> torch.Tensor:
    """Return int32 [slots, 2]: (segment, tile index) per program slot, (-1, *) for no work.

    Rows are what a program owns (queries for forward and dq, keys for dk/dv); cols are what
    it loops over. Work is the number of (row, col) pairs a tile's first or last row touches,
    a proxy good enough for ordering. The table is built once per (cu_rows, cu_cols, shape
    arguments) and reused while neither tensor changes; callers only read it.
    """
    key = (int(total_rows), int(block), bool(causal), bool(rows_are_queries))
    try:
        versions = (cu_rows._version, cu_cols._version)
    except RuntimeError:  # inference-mode tensors keep no version counter: build every time
        return _build(cu_rows, cu_cols, total_rows, block, causal, rows_are_queries)
    memo = cu_rows.__dict__.get(_MEMO)
    hit = memo.get(key) if memo is not None else None
    if hit is not None and hit[0]() is cu_cols and hit[1] == versions:
        return hit[2]
    table = _build(cu_rows, cu_cols, total_rows, block, causal, rows_are_queries)
    if memo is None:
        memo = cu_rows.__dict__.setdefault(_MEMO, {})
    memo[key] = (weakref.ref(cu_cols), versions, table)  # weak: cu_cols may be cu_rows itself
    return table


def _build(cu_rows: torch.Tensor, cu_cols: torch.Tensor, total_rows: int, block: int,
           causal: bool, rows_are_queries: bool) -> torch.Tensor:
    num_segments = cu_rows.numel() - 1
    slots = -(-total_rows // block) + num_segments  # sum(ceil(len/block)) never exceeds this
    row_lens = (cu_rows[1:] - cu_rows[:-1]).long()
    col_lens = (cu_cols[1:] - cu_cols[:-1]).long()
    tiles = (row_lens + block - 1) // block
    ends = torch.cumsum(tiles, 0)
    slot = torch.arange(slots, device=cu_rows.device)
    seg = torch.searchsorted(ends, slot, right=True)
    valid = seg < num_segments
    seg_c = seg.clamp(max=max(num_segments - 1, 0))
    tile = slot - (ends - tiles)[seg_c]

    n_rows, n_cols = row_lens[seg_c], col_lens[seg_c]
    if not causal:
        work = n_cols.clone()
    elif rows_are_queries:
        # the tile's last query sees keys 0..(n - m) + its index (bottom-right alignment)
        work = torch.minimum(n_cols, (tile + 1) * block + n_cols - n_rows).clamp(min=0)
    else:
        # keys are seen by every query from (key - (n - m)) on
        work = (n_cols - (tile * block - (n_rows - n_cols)).clamp(min=0)).clamp(min=0)
    work = torch.where(valid, work, torch.full_like(work, -1))
    order = torch.argsort(work, descending=True, stable=True)
    table = torch.stack([torch.where(valid, seg, torch.full_like(seg, -1)), tile], dim=1)
    return table[order].to(torch.int32).contiguous()
