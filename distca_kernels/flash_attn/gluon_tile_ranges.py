"""Gluon copies of tile_ranges.py's helpers (Gluon functions call only Gluon functions): which
program does what, and which tiles of the other side a tile meets. Same arithmetic, same
names; see tile_ranges.py for what each returns."""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def query_program(pid, num_slots, group):
    """(slot, q head): kv head, then slot, then the q heads of that kv head's group."""
    member = pid % group
    slot = (pid // group) % num_slots
    head = (pid // group // num_slots) * group + member
    return slot, head


@gluon.jit
def query_slot(SCHEDULE, num_slots, group):
    """(slot, q head, segment) of a q-tile program; segment < 0: no work."""
    slot, head = query_program(gl.program_id(0), num_slots, group)
    return slot, head, gl.load(SCHEDULE + 2 * slot)


@gluon.jit
def key_slot(SCHEDULE, num_slots):
    """(slot, kv head, segment) of a kv-tile program, one kv head's slots after another's."""
    pid = gl.program_id(0)
    slot = pid % num_slots
    return slot, pid // num_slots, gl.load(SCHEDULE + 2 * slot)


@gluon.jit
def query_tile(CU_Q, CU_K, SCHEDULE, slot, seg, head, group, BLOCK_M: gl.constexpr):
    """(q_start, m, k_start, n, kv head, first query) of a q-tile program with work."""
    tile = gl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    return q_start, m, k_start, n, head // group, tile * BLOCK_M


@gluon.jit
def segment_extent(CU_Q, CU_K, seg):
    """(q_start, m, k_start, n) of a segment."""
    q_start = gl.load(CU_Q + seg)
    m = gl.load(CU_Q + seg + 1) - q_start
    k_start = gl.load(CU_K + seg)
    n = gl.load(CU_K + seg + 1) - k_start
    return q_start, m, k_start, n


@gluon.jit
def keys_of_query_tile(row0, m, n, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """(diag, full_hi, hi): every row sees keys [0, full_hi), some rows keys [full_hi, hi)."""
    if CAUSAL:
        diag = n - m
        full_hi = gl.maximum(gl.minimum(row0 + diag + 1, n), 0)
        hi = gl.maximum(gl.minimum(row0 + BLOCK_M + diag, n), 0)
    else:
        diag = 0
        full_hi = n
        hi = n
    return diag, full_hi, hi


@gluon.jit
def queries_of_key_tile(col0, m, n, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, CAUSAL: gl.constexpr):
    """(diag, lo, full_lo, masked_hi): q tiles lo..masked_hi need the causal mask, from full_lo on
    every row sees every key of the tile."""
    if CAUSAL:
        diag = n - m
        lo = (gl.maximum(col0 - diag, 0) // BLOCK_M) * BLOCK_M
        full_lo = ((gl.maximum(col0 + BLOCK_N - 1 - diag, 0) + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        masked_hi = gl.minimum(full_lo, m)
    else:
        diag = 0
        lo = 0
        full_lo = 0
        masked_hi = 0
    return diag, lo, full_lo, masked_hi


@gluon.jit
def key_tile_walk(CU_Q, CU_K, SCHEDULE, slot, seg, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, GROUP: gl.constexpr,
                  CAUSAL: gl.constexpr):
    """What a kv-tile program with work (key_slot) walks (the dK/dV and fused backward kernels):
    (q_start, m, k_start, n, col0, diag, lo, num_masked, per_head, steps). Step t is q tile
    lo + (t % per_head) * BLOCK_M of q head t // per_head of the GQA group; per head, the first
    num_masked q tiles need the causal mask, the rest run without."""
    tile = gl.load(SCHEDULE + 2 * slot + 1)
    q_start, m, k_start, n = segment_extent(CU_Q, CU_K, seg)
    col0 = tile * BLOCK_N
    diag, lo, full_lo, masked_hi = queries_of_key_tile(col0, m, n, BLOCK_N, BLOCK_M, CAUSAL)
    num_masked = (masked_hi - lo + BLOCK_M - 1) // BLOCK_M
    per_head = gl.maximum((m - lo + BLOCK_M - 1) // BLOCK_M, 0)
    return q_start, m, k_start, n, col0, diag, lo, num_masked, per_head, GROUP * per_head
