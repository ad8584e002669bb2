"""The CAD planner: which attention server runs which CA-task, rebalanced every step.

Input: the tasks every rank would run in place (its own query pieces) with their costs.
Output: parts (tasks, possibly split) and the server that runs each, such that every
server's cost is within `tolerance` of the mean, moving as few bytes as it can.

Two vectorised phases (numpy; no Python loop over tokens, tasks or ranks):

1. Shed. Every server above (1 + tolerance) x mean sheds down to (1 + tolerance/2) x mean
   (a dedicated-server setup makes non-servers shed everything). Within a donor, tasks go
   in order of compute per byte (a task's cost over the bytes of its queries plus its whole
   key prefix): whole tasks while they fit, then one task is split for the remainder, from
   its head or its tail, whichever moves fewer bytes (the tail has the most compute per
   query but needs the whole prefix; a short head needs only a short prefix).
2. Place. Receivers are water-filled to a common level. Shed chunks (largest first) are laid
   on a line against the receivers' capacities (largest first); a chunk that straddles a
   capacity boundary is cut there, so a big document is spread over consecutive receivers
   with at most one cut per receiver.

Cuts snap to multiples of `block` in document positions (the kernel's tile), so shards keep
the kernel efficient. Costs of the resulting parts are re-evaluated with the cost model
(the measured table makes small shards relatively dearer, which the numbers then show).
A per-server memory cap is met by lowering the cost ceiling of servers over it and planning
again. Everything is deterministic: stable sorts with explicit tie-breaks, so every rank
computes the same plan from the same all-gathered metadata.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from parallel.cad.tasks import CostModel, TaskTable, position_at_pairs, prefix_pairs

# Donors shed down to the middle of the tolerance band, so rounding to blocks and the table's
# non-additive costs do not push them back over the band's top.
SHED_TARGET_FRACTION = 0.5
MAX_MEMORY_ROUNDS = 8


@dataclass
class Plan:
    parts: TaskTable          # tasks after moving and splitting
    server: np.ndarray        # [P] rank that runs each part
    cost: np.ndarray          # [P] cost of each part (seconds, forward + backward)
    servers: np.ndarray       # ranks that serve attention
    load_before: np.ndarray   # [N] cost if every rank ran its own queries
    load_after: np.ndarray    # [N] cost per rank under the plan
    memory: np.ndarray | None  # [N] bytes a server holds for its tasks (None: not computed)
    plan_ms: float

    @property
    def imbalance_before(self) -> float:
        return _imbalance(self.load_before)

    @property
    def imbalance_after(self) -> float:
        return _imbalance(self.load_after[self.servers])


def _imbalance(loads: np.ndarray) -> float:
    mean = float(loads.mean()) if loads.size else 0.0
    return float(loads.max()) / mean if mean > 0 else 1.0


def server_ranks(num_ranks: int, servers) -> np.ndarray:
    """The ranks that serve: all of them (servers None/0), or K spread evenly over the group
    (so dedicated servers do not all sit in one DP replica), or an explicit list."""
    if servers is None or (np.isscalar(servers) and int(servers) in (0, num_ranks)):
        return np.arange(num_ranks, dtype=np.int64)
    if np.isscalar(servers):
        k = int(servers)
        if not 1 <= k <= num_ranks:
            raise ValueError(f"servers={k} must be between 1 and the CAD group size {num_ranks} "
                             "(0 = every rank serves in place)")
        return np.unique((np.arange(k, dtype=np.int64) * num_ranks) // k)
    s = np.unique(np.asarray(servers, dtype=np.int64))
    if s.size == 0 or s[0] < 0 or s[-1] >= num_ranks:
        raise ValueError(f"servers={list(servers)} must be ranks in [0, {num_ranks})")
    return s


def _group_starts(keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's group in a sorted key array."""
    n = keys.size
    new = np.ones(n, dtype=bool)
    new[1:] = keys[1:] != keys[:-1]
    first = np.nonzero(new)[0]
    return first[np.cumsum(new) - 1]


def _snap(start, end, cut, target, head: np.ndarray, block: int) -> np.ndarray:
    """Move real cut positions to a multiple of `block` (or to start/end) inside [start, end],
    choosing the neighbour whose head part [start, c) (head=True) or tail part [c, end) has
    pair count closest to `target`."""
    fl = np.floor(cut / block) * block
    lo = np.minimum(np.maximum(fl, start), end)
    hi = np.minimum(np.maximum(fl + block, start), end)

    def err(c):
        got = np.where(head, prefix_pairs(start, c), prefix_pairs(c, end))
        return np.abs(got - target)

    return np.where(err(lo) <= err(hi), lo, hi).astype(np.int64)


def _shed(tasks: TaskTable, cost: np.ndarray, where: np.ndarray, excess: np.ndarray,
          must_empty: np.ndarray, split_floor: float, block: int, cm: CostModel):
    """Phase 1. `where[i]`: the rank task i sits on now; `excess[r]`: what rank r sheds.
    Returns (kept, kept_cost, kept_where, shed, shed_cost, shed_where)."""
    idx = np.flatnonzero(excess[where] > 0)
    if idx.size == 0:
        return tasks, cost, where, tasks.take(idx), cost[idx], where[idx]
    t, c, w = tasks.take(idx), cost[idx], where[idx]
    byt = t.q_len * cm.bytes_per_q_token + t.q_end * cm.bytes_per_kv_token
    eff = c / np.maximum(byt, 1)
    order = np.lexsort((-eff, w))  # per donor, best compute-per-byte first (stable)
    t, c, w, idx = t.take(order), c[order], w[order], idx[order]
    cs = np.cumsum(c)
    gstart = _group_starts(w)
    before = cs - c - (cs[gstart] - c[gstart])          # cost taken before this task in its donor
    x = excess[w]
    take = (before + c <= x * (1 + 1e-9)) | must_empty[w]
    # the first task that does not fit is split for what remains (if it is worth a split)
    first_out = ~take & ((np.arange(c.size) == gstart) | np.r_[True, take[:-1]])
    rem = x - before
    split = first_out & (rem > split_floor)
    untouched = np.ones(len(tasks), dtype=bool)
    untouched[idx] = False
    keep = ~take & ~split
    kept = [tasks.take(untouched), t.take(keep)]
    kept_cost = [cost[untouched], c[keep]]
    kept_where = [where[untouched], w[keep]]
    shed, shed_cost, shed_where = [t.take(take)], [c[take]], [w[take]]
    if split.any():
        s = t.take(split)
        total = prefix_pairs(s.q_start, s.q_end)
        want = rem[split] / c[split] * total
        y = position_at_pairs(s.q_start, want)              # head [q_start, y)
        xcut = position_at_pairs(s.q_start, total - want)   # tail [xcut, q_end)
        head_bytes = (y - s.q_start) * cm.bytes_per_q_token + y * cm.bytes_per_kv_token
        tail_bytes = (s.q_end - xcut) * cm.bytes_per_q_token + s.q_end * cm.bytes_per_kv_token
        head = head_bytes < tail_bytes
        cut = _snap(s.q_start, s.q_end, np.where(head, y, xcut), want, head, block)
        a = TaskTable(s.piece, s.owner, s.doc, np.where(head, s.q_start, cut),
                      np.where(head, cut, s.q_end))      # shed
        b = TaskTable(s.piece, s.owner, s.doc, np.where(head, cut, s.q_start),
                      np.where(head, s.q_end, cut))      # kept
        shed.append(a)
        shed_cost.append(cm.task_cost(a))
        shed_where.append(w[split])
        kept.append(b)
        kept_cost.append(cm.task_cost(b))
        kept_where.append(w[split])
    kept, shed = TaskTable.concat(kept), TaskTable.concat(shed)
    kept_cost, shed_cost = np.concatenate(kept_cost), np.concatenate(shed_cost)
    kept_where, shed_where = np.concatenate(kept_where), np.concatenate(shed_where)
    k = kept.q_end > kept.q_start
    sh = shed.q_end > shed.q_start
    return (kept.take(k), kept_cost[k], kept_where[k],
            shed.take(sh), shed_cost[sh], shed_where[sh])


def _water_level(load: np.ndarray, ceiling: np.ndarray, amount: float) -> np.ndarray:
    """Capacities that fill receivers to one common level (never above their ceiling)
    so that they add up to `amount` (or to all there is, when that is less)."""
    room = np.maximum(ceiling - load, 0.0)
    if amount <= 0 or room.sum() <= amount:
        return room
    if np.isinf(ceiling).all():
        # exact: with loads sorted, the level over the k lowest is (amount + their sum) / k;
        # take the first k whose level does not reach the next load
        srt = np.sort(load)
        level = (amount + np.cumsum(srt)) / np.arange(1, srt.size + 1)
        k = int(np.argmax(np.r_[level[:-1] <= srt[1:], True]))
        return np.maximum(level[k] - load, 0.0)
    lo, hi = float(load.min()), float(np.max(np.minimum(ceiling, load + amount)))
    for _ in range(60):  # bisection on the level: 60 halvings reach float precision
        mid = (lo + hi) / 2
        if np.clip(np.minimum(mid, ceiling) - load, 0, None).sum() < amount:
            lo = mid
        else:
            hi = mid
    return np.clip(np.minimum(hi, ceiling) - load, 0, None)


def _place(shed: TaskTable, shed_cost: np.ndarray, shed_where: np.ndarray, receivers: np.ndarray,
           capacity: np.ndarray, block: int, cm: CostModel):
    """Phase 2. Lay chunks against receiver capacities; returns (parts, server, cost, from)
    where server = -1 marks work no receiver had room for and `from` is where it was."""
    if len(shed) == 0:
        return shed, np.zeros(0, dtype=np.int64), shed_cost, shed_where
    corder = np.argsort(-shed_cost, kind="stable")
    ch, cc, cw = shed.take(corder), shed_cost[corder], shed_where[corder]
    rorder = np.lexsort((receivers, -capacity))
    recv, cap = receivers[rorder], capacity[rorder]
    c_end = np.cumsum(cc)
    c_start = np.r_[0.0, c_end[:-1]]
    r_end = np.cumsum(cap)
    # every capacity boundary inside the line cuts; past the last one is overflow
    bounds = r_end[r_end < c_end[-1]]
    # a boundary strictly inside chunk j cuts it
    j = np.searchsorted(c_end, bounds, side="right")
    inside = (j < len(ch)) & (bounds > c_start[np.minimum(j, len(ch) - 1)])
    bounds, j = bounds[inside], j[inside]
    a, b = ch.q_start[j], ch.q_end[j]
    total = prefix_pairs(a, b)
    want = (bounds - c_start[j]) / cc[j] * total
    cut = _snap(a, b, position_at_pairs(a, want), want, np.ones(j.size, dtype=bool), block)
    # segment starts: every chunk start plus every cut, in line order
    seg_chunk = np.concatenate([np.arange(len(ch)), j])
    seg_line = np.concatenate([c_start, bounds])
    seg_pos = np.concatenate([ch.q_start, cut])
    o = np.lexsort((seg_line, seg_chunk))
    seg_chunk, seg_line, seg_pos = seg_chunk[o], seg_line[o], seg_pos[o]
    # snapping keeps cuts ordered already; enforce it anyway so segments never go backwards
    big = np.int64(1) << np.int64(42)
    seg_pos = np.maximum.accumulate(seg_pos + seg_chunk * big) - seg_chunk * big
    last = np.r_[seg_chunk[1:] != seg_chunk[:-1], True]
    seg_end = np.where(last, ch.q_end[seg_chunk], np.r_[seg_pos[1:], 0])
    ridx = np.searchsorted(r_end, seg_line, side="right")
    server = np.full(seg_line.size, -1, dtype=np.int64)
    ok = ridx < recv.size
    server[ok] = recv[ridx[ok]]
    parts = TaskTable(ch.piece[seg_chunk], ch.owner[seg_chunk], ch.doc[seg_chunk],
                      seg_pos, seg_end)
    keep = seg_end > seg_pos
    parts, server, seg_chunk = parts.take(keep), server[keep], seg_chunk[keep]
    # only the chunks that were cut need their pieces re-costed
    cost = cc[seg_chunk]
    whole = (parts.q_start == ch.q_start[seg_chunk]) & (parts.q_end == ch.q_end[seg_chunk])
    if not whole.all():
        cost[~whole] = cm.task_cost(parts.take(~whole))
    return parts, server, cost, cw[seg_chunk]


def _plan_once(tasks, cost, where, num_ranks, servers, ceiling, tolerance, block, cm):
    """One shed-and-place pass over tasks sitting on ranks `where`; returns (parts, server, cost)."""
    load = np.bincount(where, cost, minlength=num_ranks)
    is_server = np.zeros(num_ranks, dtype=bool)
    is_server[servers] = True
    mean = load.sum() / servers.size
    top = np.minimum(ceiling, mean * (1 + tolerance))
    target = np.minimum(ceiling, mean * (1 + tolerance * SHED_TARGET_FRACTION))
    excess = np.where(load > top * (1 + 1e-12), load - target, 0.0)
    must_empty = ~is_server
    excess[must_empty] = load[must_empty]
    split_floor = mean * tolerance * SHED_TARGET_FRACTION / 2
    kept, kept_cost, kept_where, shed, shed_cost, shed_where = _shed(
        tasks, cost, where, excess, must_empty & (load > 0), split_floor, block, cm)
    kept_load = np.bincount(kept_where, kept_cost, minlength=num_ranks)
    capacity = _water_level(kept_load[servers], ceiling[servers], float(shed_cost.sum()))
    has_room = capacity > 0
    moved, dest, moved_cost, moved_from = _place(shed, shed_cost, shed_where, servers[has_room],
                                                 capacity[has_room], block, cm)
    # work nobody had room for stays where it was, or goes to the least-loaded server
    home = np.where(is_server[moved_from], moved_from, servers[np.argmin(kept_load[servers])])
    dest = np.where(dest < 0, home, dest)
    parts = TaskTable.concat([kept, moved])
    server = np.concatenate([kept_where, dest]).astype(np.int64)
    return parts, server, np.concatenate([kept_cost, moved_cost])


def _balanced(tasks, cost, num_ranks, servers, ceiling, tolerance, block, cm,
              max_passes: int = 3):
    """Shed-and-place passes until the measured costs are within tolerance: splitting
    changes costs a little (the table prices small shards dearer), so a second pass starts
    from the parts where they landed. Returns the pass with the lowest peak load, or the
    tasks where they are when every rank serves and no pass beat that: with the measured
    table a split of a short task can cost more than the whole (both halves pay for a
    padded tile), so at small sizes moving work can make the busiest server busier."""
    def peak(server, part_cost):
        return np.bincount(server, part_cost, minlength=num_ranks)[servers].max(initial=0.0)

    best = None
    if servers.size == num_ranks and np.isinf(ceiling).all():
        best = (peak(tasks.owner, cost), tasks, tasks.owner.astype(np.int64), cost)
    parts, server, part_cost = tasks, tasks.owner, cost
    for _ in range(max_passes):
        parts, server, part_cost = _plan_once(parts, part_cost, server, num_ranks, servers,
                                              ceiling, tolerance, block, cm)
        top = peak(server, part_cost)
        if best is None or top < best[0] * (1 - 1e-12):
            best = (top, parts, server, part_cost)
        load = np.bincount(server, part_cost, minlength=num_ranks)[servers]
        if load.max() <= load.mean() * (1 + tolerance) * (1 + 1e-9):
            break
    return best[1], best[2], best[3]


def segment_order(parts: TaskTable, server: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order parts by (server, doc, q_start) and flag where a kernel segment starts: parts of
    one document that meet end to start on one server run as one segment (one copy of its
    key prefix instead of several)."""
    order = np.lexsort((parts.q_start, parts.doc, server))
    s, d = server[order], parts.doc[order]
    qs, qe = parts.q_start[order], parts.q_end[order]
    new = np.ones(order.size, dtype=bool)
    new[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1]) | (qs[1:] != qe[:-1])
    return order, new


def server_memory(parts: TaskTable, server: np.ndarray, num_ranks: int, cm: CostModel) -> np.ndarray:
    """Bytes each server holds for its tasks: q, o and lse per query token, plus k and v of
    every kernel segment's key prefix."""
    mem = np.bincount(server, parts.q_len * float(cm.mem_per_q_token), minlength=num_ranks)
    if len(parts):
        order, new = segment_order(parts, server)
        seg_last = np.r_[new[1:], True]
        kv = parts.q_end[order][seg_last] * float(cm.mem_per_kv_token)
        mem += np.bincount(server[order][seg_last], kv, minlength=num_ranks)
    return mem


# The block rule below never lets one block cost more than this share of a server's mean load,
# even at tolerance 0 (where it would otherwise shrink the block to a single token).
MIN_BLOCK_TOLERANCE = 0.01


def fitting_block(tasks: TaskTable, num_servers: int, block: int, tolerance: float) -> int:
    """The block to cut at for this step: `block`, halved until one block of queries at the
    end of the longest key prefix costs at most half the tolerance band of a server's mean
    load (in causal pairs: block x prefix <= tolerance / 2 x mean). Cuts snap to multiples
    of the block, so a coarser one cannot balance within the tolerance (with 128-token blocks
    and 128 tokens per rank, pieces could only move whole). At long context this keeps the
    configured block (one 128-token block of a 128K document is ~1e-3 of a rank's load)."""
    block = int(block)
    if len(tasks) == 0 or num_servers < 1:
        return block
    mean = float(prefix_pairs(tasks.q_start, tasks.q_end).sum()) / num_servers
    limit = max(float(tolerance), MIN_BLOCK_TOLERANCE) / 2 * mean
    longest = float(tasks.q_end.max())
    while block > 1 and block * longest > limit:
        block //= 2
    return block


def plan(tasks: TaskTable, num_ranks: int, cost_model: CostModel, *, tolerance: float = 0.1,
         block: int = 128, servers=None, memory_cap: float | None = None) -> Plan:
    """Balance the attention work of `tasks` over the serving ranks (see the module doc)."""
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} must be >= 0 (e.g. 0.1 = within 10% of the mean)")
    if int(block) != block or block < 1:
        raise ValueError(f"block={block} must be a positive integer (the kernel's tile, e.g. 128)")
    if memory_cap is not None and memory_cap <= 0:
        raise ValueError(f"memory_cap={memory_cap} must be a positive number of bytes or None")
    if len(tasks) and (tasks.owner.min() < 0 or tasks.owner.max() >= num_ranks):
        raise ValueError(f"task owners must be ranks in [0, {num_ranks})")
    t0 = time.perf_counter()
    srv = server_ranks(num_ranks, servers)
    cost = cost_model.task_cost(tasks)
    load_before = np.bincount(tasks.owner, cost, minlength=num_ranks)
    ceiling = np.full(num_ranks, np.inf)
    if not memory_cap:
        parts, server, part_cost = _balanced(tasks, cost, num_ranks, srv, ceiling, tolerance,
                                             int(block), cost_model)
        load_after = np.bincount(server, part_cost, minlength=num_ranks)
        return Plan(parts, server, part_cost, srv, load_before, load_after, None,
                    (time.perf_counter() - t0) * 1e3)
    mem_before = server_memory(tasks, tasks.owner, num_ranks, cost_model)
    best = None  # (max load, parts, server, cost, memory) of the best plan within the cap
    for _ in range(MAX_MEMORY_ROUNDS):
        parts, server, part_cost = _balanced(tasks, cost, num_ranks, srv, ceiling, tolerance,
                                             int(block), cost_model)
        memory = server_memory(parts, server, num_ranks, cost_model)
        over = memory > memory_cap
        fixed, fixed_mem = (server, memory) if not over.any() else _repair_memory(
            parts, server, part_cost, srv, memory_cap, num_ranks, cost_model)
        if fixed_mem.max() <= memory_cap:
            peak = np.bincount(fixed, part_cost, minlength=num_ranks).max()
            if best is None or peak < best[0]:
                best = (peak, parts, fixed, part_cost, fixed_mem)
        if not over.any():
            break
        # plan again with a lower cost ceiling where memory overflowed: a receiver gives back
        # received work at the memory-per-cost rate of what it received; a rank over the cap
        # with its own work sheds in proportion
        load_after = np.bincount(server, part_cost, minlength=num_ranks)
        gained = load_after - load_before
        rate = np.where(gained > 0, (memory - mem_before) / np.where(gained > 0, gained, 1), 0)
        cut = np.where(rate > 0, (memory - memory_cap) / np.where(rate > 0, rate, 1) * 1.2,
                       load_after * (1 - memory_cap / memory * 0.9))
        ceiling[over] = np.minimum(ceiling[over], np.maximum(load_after - cut, 0)[over])
    if best is None:
        need = mem_before.max()
        raise ValueError(
            f"memory_cap={memory_cap:.3g} bytes per server cannot be met: running every task "
            f"where it lives already needs {need:.3g} bytes on rank {int(mem_before.argmax())}; "
            "raise parallel.cad.memory_cap or use more ranks")
    _, parts, server, part_cost, memory = best
    load_after = np.bincount(server, part_cost, minlength=num_ranks)
    return Plan(parts, server, part_cost, srv, load_before, load_after, memory,
                (time.perf_counter() - t0) * 1e3)


def _repair_memory(parts: TaskTable, server: np.ndarray, cost: np.ndarray, servers: np.ndarray,
                   cap: float, num_ranks: int, cm: CostModel):
    """Make a plan fit the memory cap: servers over it hand received parts (largest memory
    first) to the least-loaded server with room for them, or back to their owner, which held
    them before planning (so this always succeeds when running in place fits)."""
    server = server.copy()
    is_server = np.zeros(num_ranks, dtype=bool)
    is_server[servers] = True
    part_mem = parts.q_len * float(cm.mem_per_q_token) + parts.q_end * float(cm.mem_per_kv_token)
    for _ in range(MAX_MEMORY_ROUNDS):
        memory = server_memory(parts, server, num_ranks, cm)
        load = np.bincount(server, cost, minlength=num_ranks)
        movable = (memory[server] > cap) & (server != parts.owner)
        if not movable.any():
            break
        # a short loop over the parts of over-full servers only (a handful), biggest first
        for i in np.nonzero(movable)[0][np.argsort(-part_mem[movable], kind="stable")]:
            s = server[i]
            if memory[s] <= cap:
                continue
            room = is_server & (memory + part_mem[i] <= cap)
            room[s] = False
            dest = int(np.flatnonzero(room)[np.argmin(load[room])]) if room.any() else \
                (int(parts.owner[i]) if is_server[parts.owner[i]] else s)
            if dest == s:
                continue
            server[i] = dest
            memory[s] -= part_mem[i]
            memory[dest] += part_mem[i]
            load[s] -= cost[i]
            load[dest] += cost[i]
    return server, server_memory(parts, server, num_ranks, cm)


def split_halves(p: Plan, cost_model: CostModel, block: int) -> np.ndarray:
    """Ping-pong: give every part a half (0 or 1) so each server's two halves cost about the
    same. Parts go in (doc, position) order; the one straddling the middle of the server's
    cost is cut there (at most one extra split per server). Returns the half of each part,
    and replaces p.parts/p.server/p.cost in place with the split parts."""
    parts, server, cost = p.parts, p.server, p.cost
    if len(parts) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((parts.q_start, parts.doc, server))
    parts, server, cost = parts.take(order), server[order], cost[order]
    cs = np.cumsum(cost)
    gs = _group_starts(server)
    start = cs - cost - (cs[gs] - cost[gs])
    total = np.bincount(server, cost, minlength=int(server.max()) + 1)[server]
    mid = total / 2
    straddle = (start < mid) & (start + cost > mid)
    half = np.where(start + cost / 2 <= mid, 0, 1).astype(np.int64)
    if straddle.any():
        s = parts.take(straddle)
        want = (mid[straddle] - start[straddle]) / cost[straddle] * prefix_pairs(s.q_start, s.q_end)
        cut = _snap(s.q_start, s.q_end, position_at_pairs(s.q_start, want), want,
                    np.ones(len(s), dtype=bool), block)
        first = TaskTable(s.piece, s.owner, s.doc, s.q_start, cut)
        second = TaskTable(s.piece, s.owner, s.doc, cut, s.q_end)
        rest = ~straddle
        parts = TaskTable.concat([parts.take(rest), first, second])
        server = np.concatenate([server[rest], server[straddle], server[straddle]])
        half = np.concatenate([half[rest], np.zeros(len(s), np.int64), np.ones(len(s), np.int64)])
        keep = parts.q_end > parts.q_start
        parts, server, half = parts.take(keep), server[keep], half[keep]
        cost = cost_model.task_cost(parts)
    p.parts, p.server, p.cost = parts, server, cost
    return half
