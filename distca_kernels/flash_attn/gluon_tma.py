"""Host and device helpers the Gluon (Hopper) attention kernels share: segment-bounded TMA.

The descriptors have the 5-D geometry of segment_tma.py (rows past a segment's end read as
zeros and are never written), built as Gluon descriptors, which also carry the shared-memory
layout (128-byte swizzle) that TMA writes and wgmma reads. The device helpers name a
segment-relative row and move one tile into one slot of a ring of shared-memory buffers.

Name shims: Triton 3.9 renamed the TMA copies and the CTA barrier and named the TMA
reduce-add; the GPU machine has 3.6, CI compiles with the newer one, and both must work.
"""
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma

from distca_kernels.flash_attn.segment_tma import _HUGE, _ROWS_LIMIT

tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier

if hasattr(tma, "async_atomic_add"):
    tma_reduce_add = tma.async_atomic_add
else:
    @builtin
    def tma_reduce_add(tensor_desc, coord, src, _semantic=None):
        """Add a shared-memory tile into global memory (cp.reduce.async.bulk .add). Triton 3.6
        has the op (its own descriptor atomic_add lowers to it) but no Gluon name for it."""
        from triton._C.libtriton import ir
        coord = _semantic._convert_to_ir_values(coord, require_i64=False)
        _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, tensor_desc.handle, coord,
                                                  src.handle)

ROWS_LIMIT = gl.constexpr(_ROWS_LIMIT)
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}


def segment_descriptor(t, block_rows: int):
    """Descriptor over t [tokens, heads, dim] whose box is [1, 1, block_rows, 1, dim]."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    tokens, heads, dim = t.shape
    if tokens > _ROWS_LIMIT:
        raise ValueError(f"segment descriptors address at most {_ROWS_LIMIT} rows, got {tokens}")
    st, sh, _ = t.stride()
    block = [1, 1, block_rows, 1, dim]
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return TensorDescriptor(t, [_HUGE, _HUGE, _ROWS_LIMIT, heads, dim], [2 ** 34 - st, st, st, sh, 1], block, layout)


@gluon.jit
def segment_coord(start, length, row, head):
    """Coordinates of a segment-relative row in a segment descriptor."""
    return [ROWS_LIMIT, start + length, ROWS_LIMIT - length + row, head, 0]


@gluon.jit
def load_tile(desc, bars, ring, slot, start, length, row, head):
    """TMA one tile into ring slot `slot`; its barrier completes when the bytes have landed."""
    bar = bars.index(slot)
    mbarrier.expect(bar, desc.block_type.nbytes)
    tma_load(desc, segment_coord(start, length, row, head), bar, ring.index(slot))


@gluon.jit
def load_tile_pair(desc_a, desc_b, bars, ring_a, ring_b, slot, start, length, row, head):
    """Two tiles of the same rows (q and dO, say) on one barrier."""
    bar = bars.index(slot)
    mbarrier.expect(bar, desc_a.block_type.nbytes + desc_b.block_type.nbytes)
    tma_load(desc_a, segment_coord(start, length, row, head), bar, ring_a.index(slot))
    tma_load(desc_b, segment_coord(start, length, row, head), bar, ring_b.index(slot))


@gluon.jit
def load_step_rows(q_desc, do_desc, bars, q_ring, do_ring, slot, step, q_start, m, lo, per_head, first_head,
                   BLOCK_M: gl.constexpr):
    """The q and dO tiles of step `step` of a kv-tile program's walk (gluon_tile_ranges.key_tile_walk)."""
    load_tile_pair(q_desc, do_desc, bars, q_ring, do_ring, slot, q_start, m,
                   lo + (step % per_head) * BLOCK_M, first_head + step // per_head)
