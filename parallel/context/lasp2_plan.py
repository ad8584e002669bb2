"""Where a rank's tokens sit in the global stream, in the terms LASP-2 needs.

A rank's local tokens (in the shard's local order) split into *segments*: maximal runs of
consecutive global stream indices. The contiguous layout gives one segment per rank, the
zigzag layout two (chunk r and chunk 2N-1-r; one when they touch). Every segment is one
slot of the state all-gather, so the number of slots per rank is fixed by the layout and the
bytes sent do not depend on the sequence length.

Inside a segment only two pieces talk to other ranks:
  * the *first piece*, tokens before the segment's first document start: it continues a
    document from the token just before the segment, so it reads the carried-in state;
  * the *last piece*, tokens from the segment's last document start on (the whole segment
    when it has none): its state is what the segment hands on to later segments.
A segment that contains a document start cuts the chain: states before it never reach
tokens after it (the `has_doc_start` flag makes the prefix a segmented scan).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# how many state slots each rank contributes to the all-gather, per layout
LAYOUT_SLOTS = {"contiguous": 1, "zigzag": 2}


@dataclass(frozen=True)
class Segment:
    lo: int              # local token range [lo, hi)
    hi: int
    start: int           # global stream index of the first token
    first_end: int       # first piece is [lo, first_end); == lo when the segment opens a document
    last_start: int      # last piece is [last_start, hi)
    has_doc_start: bool  # some token of the segment is the first token of a document


@dataclass(frozen=True)
class Lasp2Plan:
    segments: tuple[Segment, ...]
    slots: int           # slots per rank (>= len(segments)); unused slots carry the identity
    num_tokens: int


def plan_from_shard(shard, group_rank: int, group_size: int) -> Lasp2Plan:
    """Derive the segments of this rank from its shard; errors name the field and the fix."""
    if shard.layout not in LAYOUT_SLOTS:
        raise ValueError(f"shard.layout={shard.layout!r} is not supported by LASP-2; use one of "
                         f"{tuple(LAYOUT_SLOTS)} (parallel.cp_layout=zigzag or contiguous)")
    if shard.cp_size != group_size or shard.cp_rank != group_rank:
        raise ValueError(f"shard is for cp rank {shard.cp_rank} of {shard.cp_size} but this rank is "
                         f"{group_rank} of {group_size} in state.cp_group; build the shard with "
                         "the cp rank and size of this process group")
    index = shard.index.detach().to("cpu", torch.int64)
    pos = shard.position_ids.detach().to("cpu", torch.int64)
    n = int(index.numel())
    segments = []
    if n:
        brk = torch.ones(n, dtype=torch.bool)
        brk[1:] = index[1:] != index[:-1] + 1
        bounds = torch.nonzero(brk).flatten().tolist() + [n]
        is_start = (pos == 0).tolist()
        idx = index.tolist()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            starts = [i for i in range(lo, hi) if is_start[i]]
            segments.append(Segment(lo, hi, idx[lo], starts[0] if starts else hi,
                                    starts[-1] if starts else lo, bool(starts)))
    slots = LAYOUT_SLOTS[shard.layout]
    if len(segments) > slots:
        raise ValueError(f"shard.index of cp rank {shard.cp_rank} has {len(segments)} runs of "
                         f"consecutive tokens but layout {shard.layout!r} allows {slots}; the shard "
                         "does not match its layout (build it with build_shard)")
    return Lasp2Plan(tuple(segments), slots, n)
