"""The baselines of the CAD scale simulator: per-document CP and WLB-ideal.

per-document CP (WLB-LLM's sharding): a CP group of c ranks runs the documents of c samples;
every document is cut into 2c chunks and rank i runs chunks i and 2c-1-i (head + tail, so
the causal work is nearly even inside the group), with K/V all-gathered in the group before
attention and dK/dV reduce-scattered after it; that traffic is not overlapped. c = 1 is the
plain fixed packing (every rank its own sample, nothing moves).

WLB-ideal (DistCA's reimplementation of WLB-LLM, `planner/wlb_planner.py`): the documents of
the whole step are re-packed into variable-length micro-batches ("buckets", one per CP group
and micro-batch slot), longest first, each into the bucket with the least workload if it
stays under the token cap, else into the bucket with the fewest tokens if that fits, else
deferred; deferred documents go to the least-loaded bucket regardless of the cap. DistCA's
workload is sum((l/B)^2 + l/B) with B the attention/linear breakpoint; here it is the
document's own time from the same measured costs (the same ranking with the exact B).
Then per-document CP inside each bucket.
"""
from __future__ import annotations

import heapq

import numpy as np

from benchmarks.cad_sim_model import GpuCosts


def wlb_pack(lengths, workload, num_buckets: int, cap: float) -> np.ndarray:
    """Bucket of every document (in input order), by WLB-LLM's greedy rule (module doc)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    workload = np.asarray(workload, dtype=np.float64)
    tokens = np.zeros(num_buckets, dtype=np.int64)
    work = np.zeros(num_buckets)
    heap = [(0.0, b) for b in range(num_buckets)]  # (work, bucket); ties: lowest bucket
    bucket = np.full(lengths.size, -1, dtype=np.int64)

    def least_work() -> int:
        while heap[0][0] != work[heap[0][1]]:  # drop entries made stale by a later update
            heapq.heappop(heap)
        return heap[0][1]

    def put(i: int, b: int) -> None:
        bucket[i] = b
        tokens[b] += lengths[i]
        work[b] += workload[i]
        heapq.heappush(heap, (work[b], b))

    deferred = []
    for i in np.argsort(-lengths, kind="stable").tolist():
        b = least_work()
        if tokens[b] + lengths[i] <= cap:
            put(i, b)
            continue
        b = int(np.argmin(tokens))
        if tokens[b] + lengths[i] <= cap:
            put(i, b)
        else:
            deferred.append(i)
    for i in deferred:
        put(i, least_work())
    return bucket


def per_doc_cp_layer_times(lengths, bucket, num_buckets: int, c: int, gc: GpuCosts,
                           bw: float) -> dict:
    """Per-layer forward and backward seconds of every bucket's CP group of c ranks (the
    slowest rank of the group plus the exposed all-gather), and each bucket's tokens."""
    L = np.asarray(lengths, dtype=np.int64)
    bucket = np.asarray(bucket, dtype=np.int64)
    if c == 1:
        q = kv = L[:, None]
    else:
        edges = (L[:, None] * np.arange(2 * c + 1)[None, :]) // (2 * c)
        q, kv = np.diff(edges, axis=1), edges[:, 1:]
    f, b = gc.attn(q, kv)
    if c > 1:  # rank i runs chunks i and 2c-1-i
        f, b = f[:, :c] + f[:, ::-1][:, :c], b[:, :c] + b[:, ::-1][:, :c]
    rank_f = np.zeros((num_buckets, c))
    rank_b = np.zeros((num_buckets, c))
    np.add.at(rank_f, bucket, f)
    np.add.at(rank_b, bucket, b)
    tokens = np.bincount(bucket, L, minlength=num_buckets).astype(np.float64)
    # every rank receives the other c-1 ranks' K/V (forward) and sends their dK/dV (backward)
    ag = (c - 1) / c * tokens * (gc.cm.bytes_per_kv_token / 2) / bw
    lin = tokens / c
    return {"fwd": rank_f.max(1) + lin * gc.lin_fwd_tok + ag,
            "bwd": rank_b.max(1) + lin * gc.lin_bwd_tok + ag,
            "tokens": tokens, "comm_s_per_layer_max": float(2 * ag.max())}
