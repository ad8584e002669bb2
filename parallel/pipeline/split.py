"""Which layers each pipeline chunk runs: contiguous ranges balanced by cost.

Softmax and linear-attention layers cost differently (attention over the context against a
fixed-size state), and the first and last chunks also run the embedding and the LM head
(with its vocabulary-sized matmul), so equal layer counts are not equal work. `balanced_split`
cuts the layer list into `chunks` non-empty contiguous ranges minimising the most expensive
chunk (exact, by dynamic programming over cut points); `manual_split` takes layer counts.
"""
from __future__ import annotations


def balanced_split(layer_costs: list[float], chunks: int, first_extra: float = 0.0,
                   last_extra: float = 0.0) -> list[range]:
    """Contiguous ranges of layer indices, one per chunk, minimising the largest chunk cost
    (chunk 0 also pays first_extra, the last chunk last_extra)."""
    n = len(layer_costs)
    if not 1 <= chunks <= n:
        raise ValueError(f"{n} layers cannot be cut into {chunks} pipeline chunks of at least one layer")
    prefix = [0.0]
    for c in layer_costs:
        prefix.append(prefix[-1] + c)

    def cost(a, b, k):  # layers [a, b) as chunk k
        extra = (first_extra if k == 0 else 0.0) + (last_extra if k == chunks - 1 else 0.0)
        return prefix[b] - prefix[a] + extra

    inf = float("inf")
    # best[k][b]: the smallest max cost of cutting layers [0, b) into chunks 0..k
    best = [[inf] * (n + 1) for _ in range(chunks)]
    cut = [[0] * (n + 1) for _ in range(chunks)]
    for b in range(1, n + 1):
        best[0][b] = cost(0, b, 0)
    for k in range(1, chunks):
        for b in range(k + 1, n + 1):
            for a in range(k, b):  # chunk k = layers [a, b)
                v = max(best[k - 1][a], cost(a, b, k))
                if v < best[k][b]:
                    best[k][b], cut[k][b] = v, a
    bounds, b = [n], n
    for k in range(chunks - 1, 0, -1):
        b = cut[k][b]
        bounds.append(b)
    bounds.append(0)
    bounds.reverse()
    return [range(bounds[i], bounds[i + 1]) for i in range(chunks)]


def manual_split(counts: list[int], layers: int, chunks: int) -> list[range]:
    """Ranges from layer counts per chunk (parallel.pp_split)."""
    if len(counts) != chunks or any(c < 1 for c in counts) or sum(counts) != layers:
        raise ValueError(f"parallel.pp_split={list(counts)} must give {chunks} layer counts "
                         f"(parallel.pp x parallel.pp_virtual), each >= 1, summing to the "
                         f"{layers} layers of model.layers; or leave it empty for a cost-balanced split")
    out, start = [], 0
    for c in counts:
        out.append(range(start, start + c))
        start += c
    return out
