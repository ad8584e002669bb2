"""`data.packing=balanced`: the step's document pieces laid into micro-batches so that
attention cost is even, WLB-LLM's packing adapted to fixed-size micro-batches.

Attention costs each document the square of its length, the rest of the model the length:
two micro-batches of the same size take the same time in every layer but attention, where a
micro-batch holding one 32K document does 32x the work of one holding 32 1K documents. So
every micro-batch keeps exactly `micro_batch_size x seq_len` tokens (shapes and memory as
configured, linear work equal) and only the sum of squared document lengths is balanced.
WLB-LLM (and DistCA's WLB-ideal, benchmarks/cad_sim_baselines.py) also let micro-batch
lengths vary up to a cap to trade linear work against attention, and keep documents whole;
here sizes stay fixed and the pieces are those the sequential packing cut (the step trains
on the same pieces, so on the same loss: only their placement changes). Keeping documents
whole would add attention work (no cuts) and leave less to balance: measured in
benchmarks/results/packing_balance.json.

`balanced_bins` is greedy, longest first: each piece goes whole into the micro-batch with the
least attention work among those with room for it; when none has room (micro-batches near
full), it fills the one with the most room and the rest goes back into the queue (one more
cut; at most about one per micro-batch). Then `assign_bins` gives each DP rank its share of
micro-batches, heaviest first to the lightest rank that still has a free slot. Everything is
computed from lengths alone, identically on every rank.
"""

from __future__ import annotations

import heapq

import numpy as np


def attention_work(lengths) -> float:
    a = np.asarray(lengths, dtype=np.float64)
    return float((a * a).sum())


def balanced_bins(lengths, num_bins: int, capacity: int) -> list[list[tuple[int, int, int]]]:
    """Lay documents (lengths summing to num_bins x capacity) into num_bins bins of exactly
    `capacity` tokens. Returns, per bin, (document, start, length) pieces in insertion order."""
    lengths = [int(x) for x in lengths]
    if sum(lengths) != num_bins * capacity:
        raise ValueError(f"balanced packing needs {num_bins} x {capacity} tokens, got {sum(lengths)}")
    free = [capacity] * num_bins
    work = [0.0] * num_bins
    bins: list[list[tuple[int, int, int]]] = [[] for _ in range(num_bins)]
    heap = [(0.0, b) for b in range(num_bins)]  # (work, bin): the least-worked bin on top
    # the queue: (-remaining length, document, start), longest first; ties keep input order
    queue = [(-n, d, 0) for d, n in enumerate(lengths) if n > 0]
    heapq.heapify(queue)
    while queue:
        neg, d, start = heapq.heappop(queue)
        n = -neg
        skipped, chosen = [], None
        while heap:  # least work with room for the whole document
            w, b = heapq.heappop(heap)
            if w != work[b] or free[b] == 0:
                continue  # stale entry, or a full bin (never used again)
            if free[b] >= n:
                chosen = b
                break
            skipped.append((w, b))
        for item in skipped:
            heapq.heappush(heap, item)
        if chosen is None:  # no room anywhere for all of it: fill the roomiest bin, requeue the rest
            chosen = max(range(num_bins), key=lambda b: (free[b], -b))
            part = free[chosen]
            heapq.heappush(queue, (-(n - part), d, start + part))
            n = part
        bins[chosen].append((d, start, n))
        free[chosen] -= n
        work[chosen] += float(n) * n
        if free[chosen]:
            heapq.heappush(heap, (work[chosen], chosen))
    return bins


def assign_bins(bin_work, ranks: int) -> list[list[int]]:
    """Bins (micro-batches) per DP rank, len(bin_work) / ranks each: heaviest bin first, to the
    rank with the least work so far that still has a free slot (ties: lowest rank)."""
    n = len(bin_work)
    per = n // ranks
    if per * ranks != n:
        raise ValueError(f"{n} micro-batches do not split over {ranks} DP ranks")
    load = [0.0] * ranks
    out: list[list[int]] = [[] for _ in range(ranks)]
    for b in sorted(range(n), key=lambda b: (-bin_work[b], b)):
        r = min((r for r in range(ranks) if len(out[r]) < per), key=lambda r: (load[r], r))
        out[r].append(b)
        load[r] += bin_work[b]
    return out


def imbalance(loads) -> float:
    """max / mean of per-rank (or per-micro-batch) work; 1.0 is perfectly even."""
    a = np.asarray(loads, dtype=np.float64)
    return float(a.max() / a.mean()) if a.size and a.mean() > 0 else 1.0
