"""CA-tasks (core-attention tasks) and what they cost.

A task is a range of query tokens [q_start, q_end) of one document together with the key
prefix it needs, keys [0, q_end) of the same document (causal attention). Tasks have no
weights and no state, so any rank can run them: that is what makes them movable.

The planner needs two prices per task:
- compute: the time the varlen kernel takes for (q_len, kv_len). Measured on an H100 over a
  grid (benchmarks/profile_attention_cost.py -> cost_table_h100.json) and interpolated; with
  no table, causal FLOPs at a nominal throughput (the unit then only matters relatively).
- communication: bytes per query token (q out, o back, dO out, dq back) and per key token
  (k, v out; dk, dv back), forward plus backward.

Tasks are kept as a structure of numpy arrays (`TaskTable`) so the planner never loops over
tokens or tasks in Python.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

DEFAULT_TABLE = os.path.join(os.path.dirname(__file__), "cost_table_h100.json")
TABLES = {"h100": DEFAULT_TABLE, "h200": os.path.join(os.path.dirname(__file__), "cost_table_h200.json")}


def table_for_device(device_name: str) -> str:
    """The committed table measured on this kind of GPU ("h200" when it exists), else "h100"."""
    if "H200" in device_name.upper() and os.path.exists(TABLES["h200"]):
        return "h200"
    return "h100"
# FA2-style backward does 5 matmuls to the forward's 2: about 2.5x the forward FLOPs.
BACKWARD_FLOP_RATIO = 2.5


def causal_pairs(q_len, kv_len):
    """Query-key pairs of a causal block aligned bottom-right (query i sees keys 0..kv-q+i).

    = q*kv - q*(q-1)/2 for kv >= q. Vectorised, in float64 (exact below 2^53 pairs, i.e.
    for documents up to tens of millions of tokens).
    """
    q = np.asarray(q_len, dtype=np.float64)
    kv = np.asarray(kv_len, dtype=np.float64)
    return q * kv - q * (q - 1.0) / 2.0


def prefix_pairs(start, end):
    """Pairs of the queries [start, end) of a document when each sees its full causal prefix.

    Query at document position i sees i + 1 keys, so the sum is (end(end+1) - start(start+1))/2;
    equal to causal_pairs(end - start, end).
    """
    s = np.asarray(start, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    return (e * (e + 1.0) - s * (s + 1.0)) / 2.0


def position_at_pairs(start, pairs):
    """The real x >= start with prefix_pairs(start, x) == pairs (inverse of the above)."""
    s = np.asarray(start, dtype=np.float64)
    rhs = 2.0 * np.asarray(pairs, dtype=np.float64) + s * (s + 1.0)
    return (-1.0 + np.sqrt(1.0 + 4.0 * rhs)) / 2.0


@dataclass
class TaskTable:
    """One row per task. `piece` indexes the global piece table (which rank owns those query
    tokens and where they sit in its local order); `doc` is a document id unique over the
    whole CAD group; the key prefix of a task is [0, q_end) of its document."""
    piece: np.ndarray     # int64
    owner: np.ndarray     # int64 rank that owns the query tokens (o goes back there)
    doc: np.ndarray       # int64
    q_start: np.ndarray   # int64 document position of the first query
    q_end: np.ndarray     # int64 one past the last query

    def __len__(self) -> int:
        return int(self.piece.shape[0])

    @property
    def q_len(self) -> np.ndarray:
        return self.q_end - self.q_start

    def take(self, idx) -> "TaskTable":
        return TaskTable(self.piece[idx], self.owner[idx], self.doc[idx],
                         self.q_start[idx], self.q_end[idx])

    @staticmethod
    def concat(tables: list["TaskTable"]) -> "TaskTable":
        return TaskTable(*(np.concatenate([getattr(t, f) for t in tables])
                           for f in ("piece", "owner", "doc", "q_start", "q_end")))


def load_cost_table(path: str = DEFAULT_TABLE) -> dict | None:
    """The measured table as a dict, or None when the file is absent (then FLOPs are used)."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class CostModel:
    """Compute time (seconds, forward + backward) and traffic (bytes) of attention tasks.

    `table`: a dict as written by benchmarks/profile_attention_cost.py, a path to one, "h100"
    or "h200" for a committed table (falls back to FLOPs if it is missing), or None for FLOPs.
    The table's times are scaled by (heads x head_dim) relative to the profiled shape, since
    attention work is linear in both.
    """

    def __init__(self, num_heads_q: int = 32, num_heads_kv: int = 8, head_dim: int = 128,
                 element_bytes: int = 2, table="h100", nominal_tflops: float = 400.0):
        for name, val in (("num_heads_q", num_heads_q), ("num_heads_kv", num_heads_kv),
                          ("head_dim", head_dim), ("element_bytes", element_bytes)):
            if int(val) < 1:
                raise ValueError(f"CostModel: {name}={val} must be a positive integer")
        if num_heads_q % num_heads_kv:
            raise ValueError(f"CostModel: num_heads_q={num_heads_q} must be a multiple of "
                             f"num_heads_kv={num_heads_kv} (grouped-query attention)")
        self.hq, self.hkv, self.d, self.eb = num_heads_q, num_heads_kv, head_dim, element_bytes
        self.nominal_flops = nominal_tflops * 1e12
        if isinstance(table, str):
            table = load_cost_table(TABLES.get(table, table))
        self.table = table
        if table is not None:
            self._prepare_table(table)

    # ---- traffic and memory --------------------------------------------------------------
    @property
    def bytes_per_q_token(self) -> int:
        """q out + o back (forward), dO out + dq back (backward)."""
        return 4 * self.hq * self.d * self.eb

    @property
    def bytes_per_kv_token(self) -> int:
        """k, v out (forward), dk, dv back (backward)."""
        return 4 * self.hkv * self.d * self.eb

    @property
    def resend_bytes_per_q_token(self) -> int:
        """Extra with backward=resend: LSE back (forward); q and o out again (backward), LSE out."""
        return 2 * self.hq * self.d * self.eb + 2 * self.hq * 4

    @property
    def resend_bytes_per_kv_token(self) -> int:
        """Extra with backward=resend: k, v out again in the backward."""
        return 2 * self.hkv * self.d * self.eb

    @property
    def mem_per_q_token(self) -> int:
        """What a server holds per query token between forward and backward: q, o, and the
        fp32 log-sum-exp per head."""
        return 2 * self.hq * self.d * self.eb + 4 * self.hq

    @property
    def mem_per_kv_token(self) -> int:
        return 2 * self.hkv * self.d * self.eb

    # ---- compute -------------------------------------------------------------------------
    def _prepare_table(self, t: dict) -> None:
        for key in ("q_lens", "kv_lens", "fwd_ms", "num_heads_q", "head_dim"):
            if key not in t:
                raise ValueError(f"cost table: field {key!r} is missing; regenerate it with "
                                 "benchmarks/profile_attention_cost.py")
        q = np.asarray(t["q_lens"], dtype=np.float64)
        kv = np.asarray(t["kv_lens"], dtype=np.float64)
        ms = np.asarray(t["fwd_ms"], dtype=np.float64)
        if t.get("bwd_ms") is not None:
            ms = ms + np.asarray(t["bwd_ms"], dtype=np.float64)
        else:  # forward-only table: assume the FLOP ratio for the backward
            ms = ms * (1.0 + BACKWARD_FLOP_RATIO)
        if ms.shape != (q.size, kv.size):
            raise ValueError(f"cost table: fwd_ms has shape {ms.shape}, expected "
                             f"({q.size}, {kv.size}) = (len(q_lens), len(kv_lens))")
        qq, kk = np.meshgrid(q, kv, indexing="ij")
        valid = (kk >= qq) & np.isfinite(ms) & (ms > 0)
        # seconds per (pair x head x dim): smooth over the grid, so interpolating it (in log
        # space) is far better behaved than interpolating raw times
        spf = np.full(ms.shape, np.nan)
        work = causal_pairs(qq, kk) * t["num_heads_q"] * t["head_dim"]
        spf[valid] = ms[valid] * 1e-3 / work[valid]
        # cells with kv < q are never queried but bilinear interpolation near the diagonal
        # touches them: fill each row from its nearest valid cell
        for i in range(q.size):
            row = spf[i]
            good = np.nonzero(np.isfinite(row))[0]
            if good.size == 0:
                raise ValueError(f"cost table: no valid measurement for q_len={q[i]:.0f}")
            nearest = good[np.abs(np.arange(kv.size)[:, None] - good[None, :]).argmin(1)]
            spf[i] = row[nearest]
        self._lq, self._lkv, self._lspf = np.log2(q), np.log2(kv), np.log(spf)
        self._qmin = q[0]

    def cost(self, q_len, kv_len) -> np.ndarray:
        """Seconds (forward + backward) of tasks with these query and key lengths."""
        q = np.asarray(q_len, dtype=np.float64)
        kv = np.asarray(kv_len, dtype=np.float64)
        if self.table is None:
            flops = 4.0 * causal_pairs(q, kv) * self.hq * self.d * (1.0 + BACKWARD_FLOP_RATIO)
            return flops / self.nominal_flops
        # below the smallest profiled size the kernel pads to its tile, so cost as the tile
        qe = np.maximum(q, self._qmin)
        kve = np.maximum(kv, qe)
        spf = np.exp(self._interp(np.log2(qe), np.log2(kve)))
        out = causal_pairs(qe, kve) * self.hq * self.d * spf
        return np.where(q > 0, out, 0.0)

    def _interp(self, x, y):
        """Bilinear interpolation of log(spf) on the (log q, log kv) grid, clamped at edges."""
        gx, gy, z = self._lq, self._lkv, self._lspf

        def locate(grid, v):
            # np.minimum/np.maximum rather than np.clip: clip's dtype checks cost more than
            # the arithmetic at the planner's array sizes
            v = np.minimum(np.maximum(v, grid[0]), grid[-1])
            if grid.size == 1:
                return np.zeros(v.shape, dtype=np.int64), np.zeros(v.shape)
            i = np.minimum(np.searchsorted(grid, v, side="right") - 1, grid.size - 2)
            return i, (v - grid[i]) / (grid[i + 1] - grid[i])

        i, fx = locate(gx, x)
        j, fy = locate(gy, y)
        i1 = np.minimum(i + 1, gx.size - 1)
        j1 = np.minimum(j + 1, gy.size - 1)
        return ((1 - fx) * (1 - fy) * z[i, j] + fx * (1 - fy) * z[i1, j]
                + (1 - fx) * fy * z[i, j1] + fx * fy * z[i1, j1])

    def task_cost(self, tasks: TaskTable) -> np.ndarray:
        return self.cost(tasks.q_len, tasks.q_end)

    def describe(self) -> str:
        if self.table is None:
            return f"causal FLOPs at a nominal {self.nominal_flops / 1e12:.0f} TFLOP/s"
        return (f"measured table ({self.table.get('device', '?')}, {self.table.get('kernel', '?')}), "
                f"scaled to {self.hq} q heads x head_dim {self.d}")


@dataclass
class PieceTable:
    """Every local piece of every rank of the CAD group: where its tokens live."""
    rank: np.ndarray    # owner rank
    doc: np.ndarray     # document id, unique over the group
    start: np.ndarray   # position of the first token inside the document
    length: np.ndarray
    local: np.ndarray   # offset of the first token in the owner's local order

    def tasks(self) -> "TaskTable":
        """The in-place tasks: every piece's queries, run where they live."""
        return TaskTable(np.arange(self.rank.size, dtype=np.int64), self.rank, self.doc,
                         self.start, self.start + self.length)


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate arange(s, s + n) for every (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - offs, lengths) + np.arange(total)


def contiguous_pieces(streams: list, cp: int = 1) -> PieceTable:
    """Pieces of the contiguous layout: DP replica i's stream (its document lengths) split
    into `cp` equal token ranges, rank = i * cp + cp_rank (the order of parallel/dims.py).
    The same split as `build_shard(..., layout="contiguous")`, in numpy for simulations."""
    rank, doc, start, length, local = [], [], [], [], []
    doc_base = 0
    for i, lens in enumerate(streams):
        lens = np.asarray(lens, dtype=np.int64)
        total = int(lens.sum())
        # torch.tensor_split: the first total % cp ranks get one token more
        sizes = np.full(cp, total // cp, dtype=np.int64)
        sizes[:total % cp] += 1
        bounds = np.r_[0, np.cumsum(sizes)]
        d_end = np.cumsum(lens)
        d_start = d_end - lens
        r0 = np.searchsorted(bounds, d_start, side="right") - 1
        r1 = np.searchsorted(bounds, d_end - 1, side="right") - 1
        cnt = np.where(lens > 0, r1 - r0 + 1, 0)
        dd = np.repeat(np.arange(lens.size), cnt)
        rr = expand_ranges(r0[cnt > 0], cnt[cnt > 0])
        gs = np.maximum(d_start[dd], bounds[rr])
        ge = np.minimum(d_end[dd], bounds[rr + 1])
        rank.append(i * cp + rr)
        doc.append(doc_base + dd)
        start.append(gs - d_start[dd])
        length.append(ge - gs)
        local.append(gs - bounds[rr])
        doc_base += lens.size
    cat = lambda xs: np.concatenate(xs).astype(np.int64)  # noqa: E731
    o = np.lexsort((cat(local), cat(rank)))
    return PieceTable(*(cat(x)[o] for x in (rank, doc, start, length, local)))
