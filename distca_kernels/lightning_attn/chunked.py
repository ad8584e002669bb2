"""Host side of the Triton path: segment planning, kernel launches, and the autograd Function.

Shapes follow fla: q, k [B, T, H, K], v [B, T, H, V]; states [N, H, K, V] in fp32. Without
cu_seqlens the B rows are N = B independent sequences; both cases become a list of
documents over the flattened B*T tokens, cut into segments (see `triton_common`).
"""
from __future__ import annotations

import functools

import torch
import triton

from distca_kernels.triton_loader import load_kernels, triton_mode

MAX_HEAD_DIM = 256  # a K x V-slice fp32 state lives in registers
_SCAN_BLOCK = 1024


class Kernels:
    """The kernel files of this op built for one mode (compiled or interpreted)."""

    def __init__(self, interpret: bool):
        self.interpret = interpret
        self.forward = load_kernels("distca_kernels.lightning_attn.triton_forward", interpret)
        self.backward_split = load_kernels("distca_kernels.lightning_attn.triton_backward_split", interpret)
        self.common = load_kernels("distca_kernels.lightning_attn.triton_common", interpret)


@functools.lru_cache(maxsize=2)
def kernels_for(interpret: bool) -> Kernels:
    return Kernels(interpret)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_chunks_per_segment(tokens: int, heads: int, chunk: int, device: torch.device) -> int:
    """Longest segments that still give every multiprocessor ~2 (segment, head) programs (the
    backward kernels launch twice as many, one per K or V slice). Long segments mean fewer
    fp32 states through memory and fewer scan steps, which dominate short inputs; a run with
    one chunk per segment at 4K tokens moved 4x more state bytes than token bytes."""
    if device.type != "cuda":
        return 2
    work = triton.cdiv(max(tokens, 1), chunk) * heads
    per = max(1, work // (2 * _sm_count(device.index or 0)))
    return max(1, min(64, 1 << (per.bit_length() - 1)))


@functools.lru_cache(maxsize=64)
def _plan_segments_cached(bounds: tuple, seg_len: int, device: torch.device):
    return plan_segments(torch.tensor(bounds, dtype=torch.int64), seg_len, device)


def plan_segments(cu: torch.Tensor, seg_len: int, device):
    """cu: int64 CPU tensor [N+1] of document bounds over the flattened tokens.
    Returns an int32 device tensor holding seg_bos [S], seg_eos [S], seq_seg [N+1] back to
    back, and (S, N). Every document gets at least one segment (an empty one for an empty
    document) so the scan carries its initial state through to its final state."""
    lens = cu[1:] - cu[:-1]
    n = lens.numel()
    nseg = torch.clamp((lens + seg_len - 1) // seg_len, min=1)
    seq_seg = torch.zeros(n + 1, dtype=torch.int64)
    seq_seg[1:] = torch.cumsum(nseg, 0)
    s_total = int(seq_seg[-1])
    seg_doc = torch.repeat_interleave(torch.arange(n), nseg)
    within = torch.arange(s_total) - seq_seg[seg_doc]
    seg_bos = cu[seg_doc] + within * seg_len
    seg_eos = torch.minimum(seg_bos + seg_len, cu[seg_doc + 1])
    table = torch.cat([seg_bos, seg_eos, seq_seg]).to(torch.int32).to(device)
    return table, s_total, n


@functools.lru_cache(maxsize=8)
def _dummy(device: torch.device) -> torch.Tensor:
    """A one-element fp32 tensor passed where a decay input is absent (never read)."""
    return torch.zeros(1, dtype=torch.float32, device=device)


class _Plan:
    """Everything about the problem's layout that forward and backward share."""

    def __init__(self, q, v, cu_seqlens, chunk, chunks_per_segment, block):
        _, interpret = triton_mode(q, (torch.float16, torch.bfloat16, torch.float32))
        self.k = kernels_for(interpret)  # the kernels for this input's mode
        b, t, h, kd = q.shape
        vd = v.shape[-1]
        self.B, self.T, self.H, self.K, self.V = b, t, h, kd, vd
        self.TT = b * t
        self.BT = chunk
        self.BK = max(16, triton.next_power_of_2(kd))
        self.BVF = max(16, triton.next_power_of_2(vd))
        if self.BK > MAX_HEAD_DIM or self.BVF > MAX_HEAD_DIM:
            raise ValueError(f"q, v: head dims K={kd}, V={vd} must be <= {MAX_HEAD_DIM} for the "
                             f"Triton kernel (its states live in registers); split the heads")
        self.block = block  # forced slice width (tests); None lets the tuner choose
        if cu_seqlens is None:
            cu = torch.arange(b + 1, dtype=torch.int64) * t
        else:
            cu = cu_seqlens.detach().to("cpu", torch.int64)
        self.cu = cu
        cps = chunks_per_segment or default_chunks_per_segment(self.TT, h, chunk, q.device)
        # The plan depends only on the document bounds: cached, so repeated calls (layers,
        # steps) skip its dozen small CPU ops and the copy to the device.
        self.table, self.S, self.N = _plan_segments_cached(tuple(cu.tolist()), cps * chunk,
                                                           q.device)
        self.seg_bos = self.table[:self.S]
        self.seg_eos = self.table[self.S:2 * self.S]
        self.seq_seg = self.table[2 * self.S:]
        # fp32 input: exact products in the interpreter; on a GPU three-pass TF32 (about fp32
        # accuracy on the tensor cores; "ieee" compiles for minutes and spills everything).
        if q.dtype != torch.float32:
            self.dot_prec = "tf32"  # unused: 16-bit operands
        else:
            self.dot_prec = "ieee" if self.k.interpret else "tf32x3"
        self.dims = dict(K=kd, V=vd, BK=self.BK, BVF=self.BVF, BKF=self.BK)

    def grid_over(self, dim):
        """Grid for kernels with one program per (segment, head, slice of `dim`)."""
        return lambda blk: (self.S * self.H * triton.cdiv(dim, blk),)

    def run(self, kernel, dim, args, meta):
        """Launch a tuned kernel with one program per (segment, head, slice of `dim`)."""
        self.k.common.launch(kernel, self.grid_over(dim), args, meta, self.dims, self.block)

    def scan_grid(self):
        return (self.N * self.H, triton.cdiv(self.K * self.V, _SCAN_BLOCK))


def _decay_inputs(g_gamma, g, tt, h, device):
    """(DECAY mode, g as fp32 [TT, H] or a dummy, gamma as fp32 [H] or a dummy)."""
    dummy = _dummy(device)
    if g is not None:
        return 2, g.detach().reshape(tt, h).to(torch.float32).contiguous(), dummy
    if g_gamma is not None:
        return 1, dummy, g_gamma.detach().to(torch.float32).contiguous()
    return 0, dummy, dummy


def _scan(plan, m_in, a_seg, init, reverse):
    s_out = torch.empty_like(m_in)
    final = torch.empty(plan.N, plan.H, plan.K, plan.V, dtype=torch.float32,
                        device=m_in.device)
    plan.k.forward.segment_scan_kernel[plan.scan_grid()](
        m_in, a_seg, init if init is not None else m_in, s_out, final, plan.seq_seg,
        plan.H, plan.K * plan.V, BLOCK=_SCAN_BLOCK, HAS_INIT=init is not None,
        REVERSE=reverse)
    return s_out, final


def _segment_sums(plan, a, b, decay, g32, gamma32, scale, from_start, a_seg):
    m = torch.empty(plan.S, plan.H, plan.K, plan.V, dtype=torch.float32, device=a.device)
    meta = dict(K=plan.K, V=plan.V, BT=plan.BT, BK=plan.BK, DECAY=decay,
                FROM_START=from_start, DOT_PREC=plan.dot_prec)
    plan.run(plan.k.forward.segment_state_kernel, plan.V,
             (a, b, g32, gamma32, plan.seg_bos, plan.seg_eos, m, a_seg, scale, plan.H), meta)
    return m


def forward(q, k, v, decay, g32, gamma32, scale, initial_state, plan):
    """q, k [TT, H, K], v [TT, H, V] contiguous. Returns o [TT, H, V], final [N, H, K, V],
    and the per-segment entering states and log-decays the backward needs."""
    a_seg = torch.empty(plan.S, plan.H, dtype=torch.float32, device=q.device)
    m = _segment_sums(plan, k, v, decay, g32, gamma32, 1.0, False, a_seg)
    init = None if initial_state is None else initial_state.detach().to(torch.float32).contiguous()
    s_seg, final = _scan(plan, m, a_seg, init, reverse=False)
    del m
    o = torch.empty(plan.TT, plan.H, plan.V, dtype=q.dtype, device=q.device)
    meta = dict(K=plan.K, V=plan.V, BT=plan.BT, BK=plan.BK, DECAY=decay, DOT_PREC=plan.dot_prec)
    plan.run(plan.k.forward.output_kernel, plan.V,
             (q, k, v, o, g32, gamma32, plan.seg_bos, plan.seg_eos, s_seg, scale, plan.H), meta)
    return o, final, s_seg, a_seg


def backward(q, k, v, do, dfinal, decay, g32, gamma32, scale, s_seg, a_seg, plan, need_dg):
    """Returns dq, dk, dv (input dtype), d initial_state [N, H, K, V] fp32, and the
    per-token gradient w.r.t. the cumulative log-decay (fp32 [TT, H]) or None."""
    dev = q.device
    tt, h = plan.TT, plan.H
    dfin = None if dfinal is None else dfinal.to(torch.float32).contiguous()
    dm = _segment_sums(plan, q, do, decay, g32, gamma32, scale, True, a_seg)
    e_seg, dinit = _scan(plan, dm, a_seg, dfin, reverse=True)
    del dm
    # dq and dk are split over K: the q.dq and k.dk sums for dg come in per-slice partials.
    nk = triton.cdiv(plan.K, 16) if need_dg else 1  # room for the narrowest slice
    dgq = torch.zeros(nk, tt if need_dg else 1, h, dtype=torch.float32, device=dev)
    dgk = torch.zeros_like(dgq)
    dq = torch.empty(tt, h, plan.K, dtype=q.dtype, device=dev)
    dk = torch.empty(tt, h, plan.K, dtype=k.dtype, device=dev)
    dv = torch.empty(tt, h, plan.V, dtype=v.dtype, device=dev)
    meta = dict(K=plan.K, V=plan.V, BT=plan.BT, BVF=plan.BVF, DECAY=decay, NEED_DG=need_dg,
                DOT_PREC=plan.dot_prec)
    plan.run(plan.k.backward_split.dq_split_kernel, plan.K,
             (q, k, v, do, dq, dgq, g32, gamma32, plan.seg_bos, plan.seg_eos, s_seg, scale,
              tt, h), meta)
    plan.run(plan.k.backward_split.dk_split_kernel, plan.K,
             (q, k, v, do, dk, dgk, g32, gamma32, plan.seg_bos, plan.seg_eos, e_seg, scale,
              tt, h), meta)
    plan.run(plan.k.backward_split.dv_split_kernel, plan.V,
             (q, k, do, dv, g32, gamma32, plan.seg_bos, plan.seg_eos, e_seg, scale, h),
             dict(K=plan.K, V=plan.V, BT=plan.BT, BKF=plan.BK, DECAY=decay,
                  DOT_PREC=plan.dot_prec))
    dG = (dgq.sum(0) - dgk.sum(0)) if need_dg else None
    return dq, dk, dv, dinit, dG


def reverse_cumsum_per_document(dG: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """dg_t = sum_{s >= t in t's document} dG_s, for dG [TT, H]; computed in fp64 so the
    difference of prefix sums loses nothing that matters over millions of tokens."""
    tt = dG.shape[0]
    c = torch.zeros(tt + 1, dG.shape[1], dtype=torch.float64, device=dG.device)
    c[1:] = torch.cumsum(dG.to(torch.float64), 0)
    lens = (cu[1:] - cu[:-1])
    end = torch.repeat_interleave(cu[1:], lens).to(dG.device)
    return c[end] - c[:tt]


class TritonResiduals:
    """What the Triton backward needs besides the inputs: `tensors` (per-segment entering
    states, segment log-decays, final states) for the caller to save with
    `ctx.save_for_backward`, and the layout, which is plain Python."""

    def __init__(self, plan: _Plan, decay: int, scale: float, has_init: bool):
        self.plan, self.decay, self.scale, self.has_init = plan, decay, scale, has_init


def triton_forward(q, k, v, g_gamma, g, initial_state, scale, cu_seqlens, chunk=64,
                   chunks_per_segment=None, block=None):
    """Forward without autograd: (o [B, T, H, V], final [N, H, K, V] fp32, saved tensors,
    TritonResiduals). `triton_backward` turns them into gradients."""
    plan = _Plan(q, v, cu_seqlens, chunk, chunks_per_segment, block)
    tt, h = plan.TT, plan.H
    qf, kf, vf = _flat(q, plan, plan.K), _flat(k, plan, plan.K), _flat(v, plan, plan.V)
    decay, g32, gamma32 = _decay_inputs(g_gamma, g, tt, h, q.device)
    o, final, s_seg, a_seg = forward(qf, kf, vf, decay, g32, gamma32, scale, initial_state, plan)
    res = TritonResiduals(plan, decay, scale, initial_state is not None)
    return o.view(plan.B, plan.T, h, plan.V), final, (s_seg, a_seg, final), res


def _flat(x, plan, dim):
    return x.detach().reshape(plan.TT, plan.H, dim).contiguous()


def triton_backward(do, dfinal, q, k, v, g_gamma, g, saved, res: TritonResiduals,
                    need_dg_gamma: bool, need_dg: bool):
    """(dq, dk, dv, dg_gamma, dg, d initial_state) from `triton_forward`'s saved tensors.
    do or dfinal may be None (that output was not used); decay gradients only when asked."""
    s_seg, a_seg, final = saved
    plan = res.plan
    tt, h = plan.TT, plan.H
    qf, kf, vf = _flat(q, plan, plan.K), _flat(k, plan, plan.K), _flat(v, plan, plan.V)
    _, g32, gamma32 = _decay_inputs(g_gamma, g, tt, h, q.device)
    need = need_dg or need_dg_gamma
    if do is None:
        do = torch.zeros(plan.B, plan.T, h, plan.V, dtype=qf.dtype, device=qf.device)
    dof = do.reshape(tt, h, plan.V).to(qf.dtype).contiguous()
    dq, dk, dv, dinit, dG = backward(qf, kf, vf, dof, dfinal, res.decay, g32, gamma32, res.scale,
                                     s_seg, a_seg, plan, need)
    dg = dgamma = None
    if need:
        if dfinal is not None:
            # d/dG_T of exp(G_T) in the final state: <dS_T, S_T> at each document's last
            # token (empty documents have no token, and no decay to attribute it to).
            ends = plan.cu[1:][plan.cu[1:] > plan.cu[:-1]]
            docs = torch.nonzero(plan.cu[1:] > plan.cu[:-1]).flatten()
            contrib = (dfinal.float() * final).sum((-1, -2))[docs.to(dG.device)]
            dG.index_add_(0, (ends - 1).to(dG.device), contrib)
        dg_tok = reverse_cumsum_per_document(dG, plan.cu)
        if need_dg:
            dg = dg_tok.view(plan.B, plan.T, h).to(g.dtype)
        if need_dg_gamma:
            dgamma = dg_tok.sum(0).to(g_gamma.dtype)
    shape_k = (plan.B, plan.T, h, plan.K)
    return (dq.view(shape_k), dk.view(shape_k), dv.view(plan.B, plan.T, h, plan.V), dgamma, dg,
            dinit if res.has_init else None)


class ChunkLightningAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g_gamma, g, initial_state, scale, chunk, chunks_per_segment,
                block, cu_seqlens):
        o, final, saved, res = triton_forward(q, k, v, g_gamma, g, initial_state, scale,
                                              cu_seqlens, chunk, chunks_per_segment, block)
        ctx.res = res
        ctx.init_dtype = None if initial_state is None else initial_state.dtype
        ctx.save_for_backward(q, k, v, g_gamma, g, *saved)
        ctx.set_materialize_grads(False)
        return o, final

    @staticmethod
    def backward(ctx, do, dfinal):
        q, k, v, g_gamma, g, *saved = ctx.saved_tensors
        dq, dk, dv, dgamma, dg, dinit = triton_backward(
            do, dfinal, q, k, v, g_gamma, g, saved, ctx.res, ctx.needs_input_grad[3],
            ctx.needs_input_grad[4])
        return (dq, dk, dv, dgamma, dg, None if dinit is None else dinit.to(ctx.init_dtype),
                None, None, None, None, None)


def chunk_lightning_attn_triton(q, k, v, g_gamma=None, g=None, scale=None, initial_state=None,
                                output_final_state=False, cu_seqlens=None, *, chunk_size=64,
                                chunks_per_segment=None, block=None):
    """The Triton path of `chunk_lightning_attn` (inputs assumed validated). The keyword-only
    knobs exist for tests: small chunks, segments and state slices (`block`, the width the
    untuned kernels split K or V into) reach every code path at small sizes."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, final = ChunkLightningAttnFunction.apply(q, k, v, g_gamma, g, initial_state, scale,
                                                chunk_size, chunks_per_segment, block,
                                                cu_seqlens)
    return o, (final if output_final_state else None)
