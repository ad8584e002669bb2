"""Pieces shared by the forward and backward Triton kernels.

Work is split into *segments*: runs of up to `chunks_per_segment` chunks of BT tokens, never
crossing a document boundary. One program owns one (segment, head, V-block) and walks its
chunks in order with the d_k x BV state in fp32 registers, so per-chunk states never touch
device memory; only one state per segment does (see `segment_scan_kernel`).

Decay modes (constexpr DECAY): 0 none, 1 a constant log-decay per head (g_gamma),
2 a per-token log-decay (g). All exponents the kernels take are <= 0: within a chunk we use
b_i = inclusive cumsum of g from the chunk start, and only exp(b_i), exp(b_last - b_j) and
exp(b_i - b_j) for i >= j (the causal mask is applied to the exponent, as -inf, before exp).
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from distca_kernels.triton_loader import interpreter_requested

# Loaded per mode by distca_kernels/triton_loader.py: the mode this copy is built for.
INTERPRET = interpreter_requested()


@triton.jit
def segment_program(seg_bos, seg_eos, H, DIM, BLOCK: tl.constexpr):
    """(segment, head, slice, bos, eos) of this program: one program per (segment, head,
    BLOCK-wide slice of a DIM-wide state dimension), slices fastest; the segment's tokens are
    bos..eos."""
    NB = (DIM + BLOCK - 1) // BLOCK
    pid = tl.program_id(0)
    i_b = pid % NB
    i_h = (pid // NB) % H
    i_s = pid // (NB * H)
    bos = tl.load(seg_bos + i_s).to(tl.int64)
    eos = tl.load(seg_eos + i_s).to(tl.int64)
    return i_s, i_h, i_b, bos, eos


@triton.jit
def head_log_decay(gamma, i_h, DECAY: tl.constexpr):
    """The head's constant log-decay per token (DECAY == 1), else 0."""
    gam = 0.0
    if DECAY == 1:
        gam = tl.load(gamma + i_h).to(tl.float32)
    return gam


@triton.jit
def state_tile(ptr, i_s, i_h, H, K: tl.constexpr, V: tl.constexpr, ck, cv):
    """(pointers, mask) of rows ck and columns cv of segment i_s's fp32 K x V state of head
    i_h (states are [segments, H, K, V])."""
    base = (i_s.to(tl.int64) * H + i_h) * K * V
    return ptr + base + ck[:, None] * V + cv[None, :], (ck < K)[:, None] & (cv < V)[None, :]


@triton.jit
def load_state(ptr, i_s, i_h, H, K: tl.constexpr, V: tl.constexpr, ck, cv):
    """Rows ck, columns cv of segment i_s's state of head i_h (0 past K, V): the state a
    program carries through the segment's chunks."""
    ptrs, mask = state_tile(ptr, i_s, i_h, H, K, V, ck, cv)
    return tl.load(ptrs, mask=mask, other=0.)


@triton.jit
def chunk_start(bos, c, n_chunks, BT: tl.constexpr, REVERSE: tl.constexpr):
    """First token of step c of a walk over a segment's chunks: from its start, or REVERSE from
    its end."""
    if REVERSE:
        t0 = bos + (n_chunks - 1 - c) * BT
    else:
        t0 = bos + c * BT
    return t0


@triton.jit
def chunk_log_decay(g, gam, t0, eos, i_h, H, BT: tl.constexpr, DECAY: tl.constexpr):
    """Return (b [BT], b_last): cumulative log-decay from the chunk start, and its value at the
    chunk's last valid row. Rows past the end of the segment repeat b_last."""
    rows = tl.arange(0, BT)
    if DECAY == 2:
        gv = tl.load(g + (t0 + rows) * H + i_h, mask=(t0 + rows) < eos, other=0.).to(tl.float32)
        b = tl.cumsum(gv, axis=0)
        b_last = tl.sum(gv, axis=0)
    else:
        n_valid = tl.minimum(eos - t0, BT).to(tl.float32)
        b = gam * tl.minimum((rows + 1).to(tl.float32), n_valid)
        b_last = gam * n_valid
    return b, b_last


@triton.jit
def load_rows(ptr, t0, eos, i_h, H, D: tl.constexpr, cols, BT: tl.constexpr):
    """Load a [BT, len(cols)] tile of a [tokens, H, D] tensor for head i_h, rows t0..t0+BT-1;
    rows at or past `eos` and columns past D read as 0."""
    rows = tl.arange(0, BT)
    t = t0 + rows
    mask = (t < eos)[:, None] & (cols < D)[None, :]
    return tl.load(ptr + (t[:, None] * H + i_h) * D + cols[None, :], mask=mask, other=0.)


@triton.jit
def store_rows(ptr, val, t0, eos, i_h, H, D: tl.constexpr, cols, BT: tl.constexpr):
    rows = tl.arange(0, BT)
    t = t0 + rows
    mask = (t < eos)[:, None] & (cols < D)[None, :]
    tl.store(ptr + (t[:, None] * H + i_h) * D + cols[None, :], val.to(ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def state_product(x, S, dt, TRANS_S: tl.constexpr, DOT_PREC: tl.constexpr):
    """x S, or x S^T with TRANS_S; S (fp32) cast to the operands' dtype."""
    if TRANS_S:
        xs = tl.dot(x, tl.trans(S.to(dt)), input_precision=DOT_PREC)
    else:
        xs = tl.dot(x, S.to(dt), input_precision=DOT_PREC)
    return xs


@triton.jit
def forward_walk_step(S, x, y, z, kt, vt, g, gam, t0, eos, i_h, H, causal, BT: tl.constexpr,
                      DECAY: tl.constexpr, TRANS_S: tl.constexpr, DOT_PREC: tl.constexpr):
    """One chunk of a walk that carries (a slice of) the forward state S = sum exp(G_end - G_j)
    k_j^T v_j: returns (rows, S after the chunk), with
        rows_i = sum_{j <= i} exp(b_i - b_j) (x_i . y_j) z_j + exp(b_i) x_i S  (S^T with TRANS_S).
    The output kernel takes (x, y, z) = (q, k, v); dq, the same walk on do, takes (do, v, k)
    and S^T. Rows are unscaled; kt, vt are the chunk's k and v tiles."""
    dt = x.dtype
    s = tl.dot(x, tl.trans(y), input_precision=DOT_PREC)
    if DECAY == 0:
        s = tl.where(causal, s, 0.)
        out = state_product(x, S, dt, TRANS_S, DOT_PREC)
        out = tl.dot(s.to(dt), z, out, input_precision=DOT_PREC)
        S = tl.dot(tl.trans(kt), vt, S, input_precision=DOT_PREC)
    else:
        b, b_last = chunk_log_decay(g, gam, t0, eos, i_h, H, BT, DECAY)
        s = s * tl.exp(tl.where(causal, b[:, None] - b[None, :], float("-inf")))
        # diag(exp(b)) (x S): scale the product's rows, so x feeds the MMA unchanged
        out = state_product(x, S, dt, TRANS_S, DOT_PREC) * tl.exp(b)[:, None]
        out = tl.dot(s.to(dt), z, out, input_precision=DOT_PREC)
        vd = (vt * tl.exp(b_last - b)[:, None]).to(dt)
        S = tl.dot(tl.trans(kt), vd, S * tl.exp(b_last), input_precision=DOT_PREC)
    return out, S


# DISTCA_LIGHTNING_AUTOTUNE=0 skips tuning (tests: one compile per variant instead of several).
AUTOTUNE = not INTERPRET and os.environ.get("DISTCA_LIGHTNING_AUTOTUNE", "1") != "0"

# Which dimension each tunable block size splits, and which padded full dimension it is paired
# with in the kernel's fp32 state (K x BV, BKS x V, K x BVS).
_TUNE_DIMS = {"BV": ("V", "BK"), "BKS": ("K", "BVF"), "BVS": ("V", "BKF")}
_CANDIDATES = {}


def _shapes(tune_block, candidates, dims):
    """Candidate (block, warps, stages) for these head dims: blocks no wider than the padded
    dimension, and 4 warps where the fp32 state is small enough for their registers."""
    dim, paired = _TUNE_DIMS[tune_block]
    full = max(16, triton.next_power_of_2(dims[dim]))
    out = []
    for blk, warps, stages in candidates:
        blk = min(blk, full)
        if dims[paired] * blk < 64 * 128:
            warps = 4
        if (blk, warps, stages) not in out:
            out.append((blk, warps, stages))
    return out


def tuned(fn, key, tune_block, candidates):
    """Autotune over `candidates` [(block size, warps, stages)], the block size being the kernel
    argument named `tune_block`, on a GPU. Under the interpreter, or with autotuning off, the
    plain kernel, launched with the first candidate. The candidates were chosen from the sm_90
    compiler's resource report (no register spills at K = V = 128); every tuned kernel
    overwrites all of its outputs, so the tuner's repeated launches are harmless."""
    _CANDIDATES[fn] = (tune_block, candidates)
    if not AUTOTUNE:
        return fn

    def prune(configs, named_args, **kwargs):
        dims = {**named_args, **kwargs}
        return [triton.Config({tune_block: b}, num_warps=w, num_stages=st)
                for b, w, st in _shapes(tune_block, candidates, dims)]

    # Triton's autotuner skips pruning (and tuning) when it holds a single config, so the
    # placeholders are two; `prune` replaces them with the real candidates for the call.
    placeholder = [triton.Config({tune_block: b}, num_warps=8, num_stages=2) for b in (64, 128)]
    return triton.autotune(configs=placeholder, key=key,
                           prune_configs_by={"early_config_prune": prune})(fn)


def launch(kernel, grid_of, args, meta, dims, override=None):
    """Launch a `tuned` kernel; grid_of(block) gives the grid for a value of its block size.
    override: a block size to force (tests), which only untuned launches honour."""
    if isinstance(kernel, triton.runtime.Autotuner):
        tune_block, _ = _CANDIDATES[kernel.fn]
        kernel[lambda m: grid_of(m[tune_block])](*args, **meta)
        return
    tune_block, candidates = _CANDIDATES[kernel]
    blk, warps, stages = _shapes(tune_block, candidates, dims)[0]
    blk = override or blk
    opts = {} if INTERPRET else {"num_warps": warps, "num_stages": stages}
    kernel[grid_of(blk)](*args, **meta, **{tune_block: blk}, **opts)
