"""Moving sequence-parallel rows from one layout to another in one all-to-all.

Sequence parallelism shards the residual stream by contiguous rows: TP rank r holds rows
[r * P, (r + 1) * P) of T (P = ceil(T / tp)). CAD's nano-batch ping-pong needs every
nano-batch sharded that way on its own (its rows, in its order, P_n = ceil(T_n / tp) per rank)
so the gathers, reduce-scatters and the MLP of one nano-batch run without the other. A
`RowMove` is the permutation between the two layouts: each row crosses once, so the move is
one all-to-all of about P rows per rank, and its backward is the same move reversed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from parallel import comm
from parallel.tensor.comm import gather_sequence, rows_per_rank, scatter_sequence


@dataclass
class RowMove:
    send_rows: torch.Tensor   # source rows to send, grouped by destination rank
    send_splits: list[int]
    recv_slots: torch.Tensor  # destination rows of what arrives, grouped by source rank
    recv_splits: list[int]
    in_rows: int
    out_rows: int

    def reversed(self) -> "RowMove":
        return RowMove(self.recv_slots, self.recv_splits, self.send_rows, self.send_splits,
                       self.out_rows, self.in_rows)


def nano_layout(rows: list[np.ndarray], tokens: int, tp: int, rank: int, device) -> tuple[RowMove, list[int]]:
    """The move from the sequence-parallel layout of `tokens` rows to the nano-batch layout
    (nano-batch n's rows `rows[n]`, in that order, sharded P_n per rank, one after the other),
    and the P_n. `rows` must cover every row once."""
    P = rows_per_rank(tokens, tp)
    chunks = [rows_per_rank(len(r), tp) for r in rows]
    full = np.concatenate(rows).astype(np.int64)
    src_rank, src_local = full // max(P, 1), full % max(P, 1)
    dst_rank, dst_slot = [], []
    offset = 0
    for r, c in zip(rows, chunks):
        j = np.arange(len(r), dtype=np.int64)
        dst_rank.append(j // max(c, 1))
        dst_slot.append(offset + j % max(c, 1))
        offset += c
    dst_rank, dst_slot = np.concatenate(dst_rank), np.concatenate(dst_slot)
    # both sides order a (source, destination) pair's rows by destination slot, so they agree
    out = np.nonzero(src_rank == rank)[0]
    out = out[np.lexsort((dst_slot[out], dst_rank[out]))]
    inc = np.nonzero(dst_rank == rank)[0]
    inc = inc[np.lexsort((dst_slot[inc], src_rank[inc]))]
    as_index = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    move = RowMove(as_index(src_local[out]), np.bincount(dst_rank[out], minlength=tp).tolist(),
                   as_index(dst_slot[inc]), np.bincount(src_rank[inc], minlength=tp).tolist(),
                   P, sum(chunks))
    return move, chunks


def _apply(x: torch.Tensor, m: RowMove, group) -> torch.Tensor:
    send = x.index_select(0, m.send_rows)
    recv = send.new_empty((sum(m.recv_splits),) + tuple(x.shape[1:]))
    if group is None or dist.get_world_size(group) == 1:
        recv = send
    else:
        comm.all_to_all_single(recv, send.contiguous(), m.recv_splits, m.send_splits, group)
    out = x.new_zeros((m.out_rows,) + tuple(x.shape[1:]))  # rows nothing lands on: padding
    return out.index_copy_(0, m.recv_slots, recv)


class _Move(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, move: RowMove, group):
        ctx.move, ctx.group = move, group
        return _apply(x, move, group)

    @staticmethod
    def backward(ctx, grad):
        return _apply(grad.contiguous(), ctx.move.reversed(), ctx.group), None, None


def move_rows(x: torch.Tensor, move: RowMove, group) -> torch.Tensor:
    """x [move.in_rows, ...] in the source layout -> [move.out_rows, ...] in the target one."""
    return _Move.apply(x, move, group)


class NanoSequenceParallel:
    """Sequence parallelism for blocks that run CAD's two nano-batches: the model's declared
    `NanoSequenceLayout` (distca/model/nano_batches.py; tensor parallelism injects one per
    block). `split` moves the row-sharded stream to the nano-batch layout (where a run of such
    blocks starts), `gather` / `scatter` are one nano-batch's all-gather before its
    column-parallel projection and reduce-scatter after its row-parallel output (its MLP keeps
    its own hooks), `merge` moves the stream back (after the run's last block)."""

    def __init__(self, group):
        self.group = group
        self.tp, self.rank = dist.get_world_size(group), dist.get_rank(group)

    def _move(self, shard, rows=None, device=None):
        """The shard's move (built by `split`, once per micro-batch; `merge` finds it)."""
        return shard.memo(("nano_sequence_parallel", id(self.group)), lambda: nano_layout(
            [r.cpu().numpy() for r in rows], shard.num_tokens, self.tp, self.rank, device))

    def split(self, x, shard, rows) -> list[torch.Tensor]:
        move, chunks = self._move(shard, rows, x.device)
        return list(move_rows(x, move, self.group).split(chunks))

    def gather(self, h, tokens: int):
        return gather_sequence(h, tokens, self.group)

    def scatter(self, a):
        return scatter_sequence(a, self.group)

    def merge(self, outs, shard):
        move, _ = self._move(shard)
        return move_rows(torch.cat(outs), move.reversed(), self.group)
