"""LASP-2 communication: what a linear layer sends does not depend on the sequence length,
it is one all-gather per pass, and the forward/backward all-gathers are in flight while the
intra-rank kernel runs (started before it, waited for after it)."""
from __future__ import annotations

import parallel.context.lasp2 as lasp2
from parallel.comm_counter import CommCounter
from parallel import comm
from parallel.dims import ParallelDims, ParallelState
from tests.distributed_utils import run_distributed
from tests.test_lasp2 import H, K, V, make_inputs, make_shard

SLOTS = {"contiguous": 1, "zigzag": 2}


def _bytes_per_pass(state, layout, total, rank, size):
    """(forward bytes, forward calls, backward bytes, backward calls) of one layer call."""
    doc_lens = [total // 3, 1, total - total // 3 - 1]
    (q, k, v), gates, w = make_inputs(total, "g", 5)
    shard = make_shard(doc_lens, layout, rank, size)
    leaves = [x[shard.index].clone().requires_grad_() for x in (q, k, v)]
    g = gates["g"][shard.index].clone().requires_grad_()
    strategy = lasp2.Lasp2LinearAttention(state.cp_group)
    with CommCounter() as fwd:
        o = strategy(*leaves, shard, g=g)
    loss = (o * w[shard.index]).sum()
    with CommCounter() as bwd:
        loss.backward()
    return fwd.bytes_sent, dict(fwd.calls), bwd.bytes_sent, dict(bwd.calls)


def _event_order(state, rank, size):
    """The order of gather launch, intra kernel, and wait in forward and backward."""
    log = []
    kernel, kernel_bwd = lasp2.chunk_lightning_attn_forward, lasp2.chunk_lightning_attn_backward

    def collective(event):
        log.append({"all_gather_into_tensor": "gather", "wait": "wait"}.get(event.op, event.op))

    lasp2.chunk_lightning_attn_forward = lambda *a, **kw: log.append("kernel") or kernel(*a, **kw)
    lasp2.chunk_lightning_attn_backward = (lambda *a, **kw: log.append("intra backward")
                                           or kernel_bwd(*a, **kw))
    try:
        with comm.observe(collective):
            (q, k, v), gates, w = make_inputs(30, "g_gamma", 6)
            shard = make_shard([30], "zigzag", rank, size)
            leaves = [x[shard.index].clone().requires_grad_() for x in (q, k, v)]
            o = lasp2.Lasp2LinearAttention(state.cp_group)(*leaves, shard, g_gamma=gates["g_gamma"])
            (o * w[shard.index]).sum().backward()
    finally:
        lasp2.chunk_lightning_attn_forward, lasp2.chunk_lightning_attn_backward = kernel, kernel_bwd
    return log


def _worker(rank, size):
    state = ParallelState.create(ParallelDims.resolve(size, cp=size))
    for layout in ("contiguous", "zigzag"):
        short = _bytes_per_pass(state, layout, 4 * size + 1, rank, size)
        long = _bytes_per_pass(state, layout, 40 * size + 7, rank, size)
        assert short == long, f"{layout}: bytes depend on the sequence length: {short} vs {long}"
        fwd_bytes, fwd_calls, bwd_bytes, bwd_calls = long
        assert sum(fwd_calls.values()) == 1 and sum(bwd_calls.values()) == 1, (fwd_calls, bwd_calls)
        # one record per slot: start (2 floats), document-start flag, H decays, H*K*V state (fp64)
        slots = SLOTS[layout]
        assert fwd_bytes == (size - 1) * slots * (3 + H + H * K * V) * 8, (layout, fwd_bytes)
        assert bwd_bytes == (size - 1) * slots * H * K * V * 8, (layout, bwd_bytes)
    order = _event_order(state, rank, size)
    assert order == ["gather", "kernel", "wait", "gather", "intra backward", "wait"], order


def test_lasp2_bytes_do_not_depend_on_length_and_gathers_overlap_the_kernel():
    run_distributed(_worker, 3)
