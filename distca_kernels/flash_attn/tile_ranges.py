"""Device helpers every Triton attention kernel shares: which slot, segment and tile a program
owns (its prologue), and which tiles of the other side a tile meets.

Loaded by distca_kernels/triton_loader.py like the kernel files, so the helpers are built in the same mode
(compiled or interpreted) as the kernels that call them. The Gluon kernels have their own
copies in gluon_tile_ranges.py (Gluon functions call only Gluon functions).
"""
import triton
import triton.language as tl


@triton.jit
def query_program(pid, num_slots, group):
    """(slot, q head) of a program that owns a q tile: kv head, then slot, then the q heads of
    that kv head's group (tile_order.py says why)."""
    member = pid % group
    slot = (pid // group) % num_slots
    head = (pid // group // num_slots) * group + member
    return slot, head


@triton.jit
def query_slot(SCHEDULE, num_slots, group):
    """(slot, q head, segment) of this program when programs own q tiles; segment < 0 marks a
    schedule slot with no work (tile_order.py), whose program returns at once."""
    slot, head = query_program(tl.program_id(0), num_slots, group)
    return slot, head, tl.load(SCHEDULE + 2 * slot)


@triton.jit
def key_slot(SCHEDULE, num_slots):
    """(slot, kv head, segment) of this program when programs own kv tiles: one kv head's
    slots after another's (tile_order.py says why); segment < 0 as in query_slot."""
    pid = tl.program_id(0)
    slot = pid % num_slots
    return slot, pid // num_slots, tl.load(SCHEDULE + 2 * slot)


@triton.jit
def query_tile(CU_Q, CU_K, SCHEDULE, slot, seg, head, group, BLOCK_M: tl.constexpr):
    """(q_start, m, k_start, n, kv head, first query) of a q-tile program with work: its
    segment's extent (segment_extent), the kv head its q head reads, its first query row."""
    tile = tl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    return q_start, m, k_start, n, head // group, tile * BLOCK_M


@triton.jit
def key_tile(CU_Q, CU_K, SCHEDULE, slot, seg, BLOCK_N: tl.constexpr):
    """(q_start, m, k_start, n, first key) of a kv-tile program with work."""
    tile = tl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    return q_start, m, k_start, n, tile * BLOCK_N


@triton.jit
def segment_extent(CU_Q, CU_K, seg):
    """(q_start, m, k_start, n): where a segment's queries and keys start, and how many."""
    q_start = tl.load(CU_Q + seg)
    m = tl.load(CU_Q + seg + 1) - q_start
    k_start = tl.load(CU_K + seg)
    n = tl.load(CU_K + seg + 1) - k_start
    return q_start, m, k_start, n


@triton.jit
def keys_of_query_tile(row0, m, n, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """(diag, full_hi, hi) for the queries row0.. of a segment: query i sees keys 0..i + diag
    (bottom-right causal); every row sees keys [0, full_hi), some rows keys [full_hi, hi)."""
    if CAUSAL:
        diag = n - m
        full_hi = tl.maximum(tl.minimum(row0 + diag + 1, n), 0)
        hi = tl.maximum(tl.minimum(row0 + BLOCK_M + diag, n), 0)
    else:
        diag = 0
        full_hi = n
        hi = n
    return diag, full_hi, hi


@triton.jit
def queries_of_key_tile(col0, m, n, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """(diag, lo, full_lo, masked_hi) for the keys col0..: q tiles from lo (the first with a row
    that sees one of these keys) up to masked_hi need the causal mask; from full_lo on, every
    row sees every key of the tile."""
    if CAUSAL:
        diag = n - m
        lo = (tl.maximum(col0 - diag, 0) // BLOCK_M) * BLOCK_M
        full_lo = ((tl.maximum(col0 + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        masked_hi = tl.minimum(full_lo, m)
    else:
        diag = 0
        lo = 0
        full_lo = 0
        masked_hi = 0
    return diag, lo, full_lo, masked_hi
