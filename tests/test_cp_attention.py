"""Context-parallel softmax attention (ring, allgather, ulysses, usp) against the
single-process reference, on gloo CPU ranks for world sizes 1..8.

One spawn of 8 ranks runs every algorithm/layout case on CP groups of 2..8 ranks (the
others wait), then on a dp=2 x cp=4 grid; world size 1 runs in-process: fp64 outputs and q/k/v
gradients must match `LocalCoreAttention` on the unsharded stream to round-off, and in fp32
the error against the fp64 reference must stay within a fixed multiple of the
single-process fp32 kernel's own error, whatever the number of ranks.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.distributed as dist

from parallel.context.allgather import AllGatherAttention
from parallel.comm_counter import CommCounter
from parallel.context.local import LocalCoreAttention
from parallel.context.ring import RingAttention
from parallel.context.shard import build_shard, doc_tables
from parallel.context.ulysses import UlyssesAttention
from parallel.context.usp import USPAttention
from parallel.dims import ParallelDims, ParallelState
from tests.distributed_utils import run_distributed

FP32_GROWTH = 3.0  # allowed fp32 RMS error, in multiples of the single-process fp32 error


def _heads(n: int) -> tuple[int, int]:
    """(query heads, KV heads) Ulysses can split over n ranks; GQA everywhere, KV replicated
    when n exceeds the KV heads (n = 4, 5, 6, 7, 8)."""
    return {1: (8, 2), 2: (8, 2), 4: (8, 2), 8: (8, 2), 3: (6, 3), 6: (6, 3)}.get(n, (n, 1))


def _doc_lens(n: int, seed: int) -> list[int]:
    """Random documents: some shorter than 2N (empty chunks), one long enough to cross ranks."""
    rng = random.Random(seed)
    total = rng.randint(10 * n, 10 * n + 40)
    lens = [rng.randint(total // 3, total // 2)]
    while sum(lens) < total:
        lens.append(rng.choice([1, 2, rng.randint(1, 2 * n + 1), rng.randint(3, 30)]))
    rng.shuffle(lens)
    return lens


def _cases(n: int) -> list[tuple[str, str, int, dict]]:
    """(cp_algo, layout, ulysses degree, options)."""
    cases = [("ring", "zigzag", 1, {}), ("ring", "head_tail", 1, {}), ("ring", "contiguous", 1, {}),
             ("allgather", "zigzag", 1, {}), ("allgather", "head_tail", 1, {"kv_head_groups": 1}),
             ("ulysses", "contiguous", 1, {}), ("ulysses", "zigzag", 1, {})]
    for u in range(2, n + 1):
        if n % u == 0 and (u < n or n == 2):
            cases.append(("usp", "zigzag" if u % 2 == 0 else "head_tail", u, {}))
    return cases


def _usp_groups(state, u: int):
    """(ulysses_group, ring_group) of this rank: the state's own (built by ParallelState.create),
    or made here for a CP group of the first state.dims.cp ranks. Every rank calls this in the
    same order (creating a group is collective)."""
    if state.ulysses_group is not None or not dist.is_initialized():
        return state.ulysses_group, state.ring_group
    n, me = state.dims.cp, dist.get_rank()
    mine = [None, None]
    for kind, lists in enumerate(([list(range(g * u, (g + 1) * u)) for g in range(n // u)],
                                  [list(range(i, n, u)) for i in range(u)])):
        for ranks in lists:
            grp = dist.new_group(ranks)
            if me in ranks and me < n:
                mine[kind] = grp
    return tuple(mine)


def _make_strategy(state, algo, u, options):
    g = state.cp_group
    if algo == "ring":
        return RingAttention(g)
    if algo == "allgather":
        return AllGatherAttention(g, **options)
    if algo == "ulysses":
        return UlyssesAttention(g)
    return USPAttention(g, *_usp_groups(state, u), ulysses=u)


def _run_case(state, strategy, layout, doc_lens, hq, hkv, dtype, seed):
    """(max |o - ref|, max |grad - ref grad|) of this rank's tokens; ref is fp64 local."""
    n, r = state.dims.cp, state.cp_rank
    g = torch.Generator().manual_seed(seed)
    total, d = sum(doc_lens), 8
    q = torch.randn(total, hq, d, generator=g, dtype=torch.float64)
    k = torch.randn(total, hkv, d, generator=g, dtype=torch.float64)
    v = torch.randn(total, hkv, d, generator=g, dtype=torch.float64)
    do = torch.randn(total, hq, d, generator=g, dtype=torch.float64)
    # round inputs to the tested dtype first, so the error measured is the computation's own
    q, k, v, do = (x.to(dtype).double() for x in (q, k, v, do))
    scale = 0.7 * d ** -0.5

    full = build_shard(doc_lens, 0, 1, "contiguous")
    ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
    ref = LocalCoreAttention()(*ref_in, full, scale)
    ref_grads = torch.autograd.grad(ref, ref_in, do)

    shard = build_shard(doc_lens, r, n, layout)
    mine = [shard.local(x).to(dtype).requires_grad_() for x in (q, k, v)]
    o = strategy(*mine, shard, scale)
    assert o.shape == mine[0].shape and o.dtype == dtype
    grads = torch.autograd.grad(o, mine, shard.local(do).to(dtype))
    if dtype == torch.float64:  # exact up to round-off: the worst element
        err_o = (o.double() - shard.local(ref)).abs().max().item()
        err_g = max((a.double() - shard.local(b)).abs().max().item() for a, b in zip(grads, ref_grads))
        return err_o, err_g
    # fp32: RMS error over all tokens (a max is dominated by tokens that never merge blocks)
    sq_o = ((o.double() - shard.local(ref)) ** 2).sum()
    sq_g = sum(((a.double() - shard.local(b)) ** 2).sum() for a, b in zip(grads, ref_grads))
    tot = torch.stack([sq_o, sq_g, torch.tensor(float(o.numel()), dtype=torch.float64)])
    if state.cp_group is not None:
        dist.all_reduce(tot, group=state.cp_group)
    return (tot[0] / tot[2]).sqrt().item(), (tot[1] / (3 * tot[2])).sqrt().item()


def _single_process_state():
    return ParallelState(ParallelDims.resolve(1), 0, torch.device("cpu"))


def _local_fp32_error(doc_lens, hq, hkv, seed):
    """How far the single-process fp32 kernel is from fp64 (the yardstick for CP fp32)."""
    st = _single_process_state()
    return _run_case(st, LocalCoreAttention(), "contiguous", doc_lens, hq, hkv, torch.float32, seed)


def _check_world(state, active: bool):
    """Every case on a CP group of state.dims.cp ranks. Ranks outside the group (active=False)
    still construct the strategies: USP's sub-groups are created collectively by all ranks."""
    n = state.dims.cp
    hq, hkv = _heads(n)
    if active:
        _check_gather_and_bytes(state)
    for i, (algo, layout, u, options) in enumerate(_cases(n)):
        strategy = _make_strategy(state, algo, u, options)
        if not active:
            continue
        seed = 1000 * n + i
        doc_lens = _doc_lens(n, seed)
        if algo == "usp":  # heads that split over the Ulysses degree u (KV replicated when u > 2)
            hq_c, hkv_c = 2 * u, 2 if u % 2 == 0 else 1
        else:
            hq_c, hkv_c = hq, hkv
        err_o, err_g = _run_case(state, strategy, layout, doc_lens, hq_c, hkv_c, torch.float64, seed)
        assert err_o < 1e-12 and err_g < 1e-12, (algo, layout, u, n, doc_lens, err_o, err_g)
        if layout != "contiguous" or algo == "ulysses":
            e32 = _run_case(state, strategy, layout, doc_lens, hq_c, hkv_c, torch.float32, seed)
            ref32 = _local_fp32_error(doc_lens, hq_c, hkv_c, seed)
            for got, yard, what in zip(e32, ref32, ("output", "grad")):
                assert got <= FP32_GROWTH * yard, (algo, layout, u, n, what, got, yard)


def _check_gather_and_bytes(state):
    """Shard.gather_global undoes the layout; the comm counter sees exactly the ring's K/V hops."""
    n, r = state.dims.cp, state.cp_rank
    doc_lens = _doc_lens(n, 5)
    shard = build_shard(doc_lens, r, n, "zigzag")
    got = shard.gather_global(shard.position_ids.double(), group=state.cp_group)
    assert torch.equal(got, doc_tables(doc_lens)[1].double())
    ring = RingAttention(state.cp_group)
    hkv, d = 2, 8
    x = [torch.randn(shard.num_tokens, h, d) for h in (4, hkv, hkv)]
    with CommCounter() as c:
        ring(*x, shard, 0.3)
    # rank r forwards every block except that of rank r+1 (which it would send back home)
    blocks = [p.num_tokens for p in shard.peers()]
    want = (sum(blocks) - blocks[(r + 1) % n]) * 2 * hkv * d * 4 if n > 1 else 0
    assert c.bytes_sent == want, (c.by_op, want)


def _worker(rank, world_size):
    """One spawn for all world sizes: CP groups of the first n ranks, n = 2..world_size."""
    for n in range(2, world_size + 1):
        ranks = list(range(n))
        group = dist.new_group(ranks)  # collective: every rank calls it
        dims = ParallelDims.resolve(n, cp=n)
        state = ParallelState(dims, rank, torch.device("cpu"), cp_rank=rank if rank < n else 0,
                              cp_group=group if rank < n else None)
        _check_world(state, active=rank < n)
    # the real grid: 2 data-parallel replicas of CP=4 (CP groups are not the whole world)
    dims = ParallelDims.resolve(world_size, dp=2, cp=world_size // 2)
    state = ParallelState.create(dims, ulysses=2)
    hq, hkv = 4, 2
    for algo, layout, u in (("usp", "zigzag", 2), ("ring", "head_tail", 1), ("allgather", "zigzag", 1)):
        strategy = _make_strategy(state, algo, u, {})
        doc_lens = _doc_lens(dims.cp, 77 + state.dp_rank)  # each replica its own documents
        err = _run_case(state, strategy, layout, doc_lens, hq, hkv, torch.float64, 5 + state.dp_rank)
        assert max(err) < 1e-12, (algo, "dp=2", err)


def test_cp_attention_single_process():
    """World size 1: no process group at all (the strategies must not need one)."""
    _check_world(_single_process_state(), active=True)


def test_cp_attention_matches_reference_world_sizes_2_to_8():
    run_distributed(_worker, 8)


def test_bad_configuration_errors_name_the_fix():
    from parallel.context.ulysses import kv_replication

    assert kv_replication(8, 2, 4, "parallel.cp") == 2 and kv_replication(8, 8, 4, "parallel.cp") == 1
    with pytest.raises(ValueError, match="query heads cannot be split over parallel.cp=3"):
        kv_replication(8, 2, 3, "parallel.cp")
    with pytest.raises(ValueError, match="KV heads cannot be split over parallel.ulysses=4"):
        kv_replication(12, 6, 4, "parallel.ulysses")
    with pytest.raises(ValueError, match="kv_head_groups"):
        AllGatherAttention(None, kv_head_groups=0)
    assert UlyssesAttention.default_layout == "contiguous" and USPAttention.default_layout == "zigzag"
    assert RingAttention.default_layout == "zigzag" == AllGatherAttention.default_layout
    shard = build_shard([6, 4], 1, 2, "zigzag")  # a shard of rank 1 of 2, but no CP group here
    x = torch.zeros(shard.num_tokens, 2, 8)
    with pytest.raises(ValueError, match="build_shard"):
        RingAttention()(x, x, x, shard, 0.3)
    with pytest.raises(ValueError, match="tokens"):
        one = build_shard([6, 4], 0, 1, "zigzag")
        AllGatherAttention()(x, x, x, one, 0.3)
