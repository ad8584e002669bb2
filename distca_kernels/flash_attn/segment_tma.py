"""TMA descriptors that stay inside one segment of a packed [tokens, heads, dim] tensor.

A plain descriptor over the packed tensor clips only at the tensor's ends, so a tile running
past the end of a document would read the next document's rows (and write into them). The
bound per segment comes from the descriptor's geometry (the idea of triton.tools.ragged_tma):
two extra leading dimensions whose strides, times fixed coordinates, wrap the 64-bit address
around to zero, so that the row coordinate can be written relative to the segment's *end*.
The hardware's bounds check on that coordinate then clips at the end of the segment: rows
past it load as zeros and are dropped from stores, exactly like masked
pointer accesses, at no cost in registers.

Address of coordinate (a, b, r, h, d), in elements:
    a * (2**34 - st) + b * st + r * st + h * sh + d
With a = 2**30 the first term is -(2**30) * st modulo 2**64; with b = start + length and
r = 2**30 - length + row it sums to (start + row) * st, and r < 2**30 (the dimension's size)
holds exactly for row < length.

GPU only (sm_90+). Loaded by distca_kernels/triton_loader.py like the kernel files, so the helpers are built in
the same mode (compiled or interpreted) as the kernels that call them.
"""
import triton
import triton.language as tl

_ROWS_LIMIT = 2 ** 30
_HUGE = 0x7FFF0000


def segment_descriptor(t, block_rows: int):
    """Descriptor over t [tokens, heads, dim] whose box is [1, 1, block_rows, 1, dim]."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    tokens, heads, dim = t.shape
    if tokens > _ROWS_LIMIT:
        raise ValueError(f"segment descriptors address at most {_ROWS_LIMIT} rows, got {tokens}")
    st, sh, sd = t.stride()
    return TensorDescriptor(t, [_HUGE, _HUGE, _ROWS_LIMIT, heads, dim], [2 ** 34 - st, st, st, sh, sd],
                            [1, 1, block_rows, 1, dim])


@triton.jit
def load_segment_rows(desc, seg_start, seg_len, row, head, BLOCK: tl.constexpr, DIM: tl.constexpr):
    """Rows seg_start + row .. + BLOCK of one head; rows at or past seg_len read as 0."""
    tile = desc.load([_ROWS_LIMIT_C, seg_start + seg_len, _ROWS_LIMIT_C - seg_len + row, head, 0])
    return tile.reshape(BLOCK, DIM)


@triton.jit
def store_segment_rows(desc, seg_start, seg_len, row, head, value, BLOCK: tl.constexpr, DIM: tl.constexpr):
    desc.store([_ROWS_LIMIT_C, seg_start + seg_len, _ROWS_LIMIT_C - seg_len + row, head, 0],
               value.reshape(1, 1, BLOCK, 1, DIM))


@triton.jit
def load_key_rows(DESC, ptrs, k_start, n, start_n, kv_head, col_ok, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                  MASKED: tl.constexpr, USE_TMA: tl.constexpr):
    """A K or V tile, rows start_n.. of one kv head: through its segment descriptor, or by
    pointer loads, masked by col_ok (rows at or past the segment end read as 0) where MASKED."""
    if USE_TMA:
        tile = load_segment_rows(DESC, k_start, n, start_n, kv_head, BLOCK_N, HEAD_DIM)
    elif MASKED:
        tile = tl.load(ptrs, mask=col_ok[:, None], other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def load_query_and_grad_rows(Q_DESC, DO_DESC, q_base, do_base, q_start, m, start_m, head, rows, row_ok, offs_d,
                             stride_qt, stride_dot, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                             USE_TMA: tl.constexpr):
    """q and dO rows start_m.. of one head, rows at or past m read as 0: through the segment
    descriptors, or (USE_TMA off, as in the interpreter) masked pointer loads from the bases."""
    if USE_TMA:
        q = load_segment_rows(Q_DESC, q_start, m, start_m, head, BLOCK_M, HEAD_DIM)
        do = load_segment_rows(DO_DESC, q_start, m, start_m, head, BLOCK_M, HEAD_DIM)
    else:
        q = tl.load(q_base + rows[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + rows[:, None] * stride_dot + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    return q, do


_ROWS_LIMIT_C = tl.constexpr(_ROWS_LIMIT)
