"""Public entry point: LM head + next-token cross-entropy, gradients computed in the forward.

Dispatch (distca_kernels/triton_loader.py): the per-chunk CE step runs the Triton row kernel for CUDA
compute dtypes fp16/bf16/fp32, the same kernel in Triton's interpreter for CPU fp16/fp32 under
TRITON_INTERPRET=1, and its torch twin (reference.ce_rows_torch) otherwise (CPU, fp64). The
chunk loop, the GEMMs and the autograd Function are shared by every path.
"""
from __future__ import annotations

import torch

from distca_kernels.arguments import FLOAT_DTYPES, require_float_tensor, require_tensor
from distca_kernels.linear_ce.reference import IGNORE_INDEX, ce_rows_torch
from distca_kernels.precision import accumulator_dtype
from distca_kernels.triton_loader import load_kernels, triton_mode

_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_V = 8192  # the row kernel's block width cap (tests lower it to reach many blocks)
_fp32_out_ok: dict[tuple[str, torch.dtype], bool] = {}


def uses_triton(hidden: torch.Tensor, compute_dtype: torch.dtype | None = None) -> bool:
    """Whether `linear_cross_entropy_sum` runs the Triton CE kernel for these arguments."""
    cd = hidden.dtype if compute_dtype is None else compute_dtype
    return triton_mode(torch.empty(0, dtype=cd, device=hidden.device), _TRITON_DTYPES)[0]


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                             chunk: int = 4096,
                             compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """sum over t with labels[t] != -100 of CE(hidden[t] @ weight.T, labels[t]).

    hidden [T, d], weight [V, d], labels [T] int64 in [0, V) or -100. The GEMMs run in
    compute_dtype (default hidden's; pass torch.bfloat16 under autocast: the caller's autocast
    state is ignored, hidden and weight are cast once per call), the softmax in fp32 (fp64
    for fp64). Returns a 0-dim fp32 tensor (fp64 if hidden is fp64). Differentiable w.r.t.
    hidden and weight: their gradients are computed here, chunk by chunk, and the backward
    only scales them by the incoming gradient. Peak extra memory: one [chunk, V] logits
    buffer in compute_dtype, plus grad buffers [T, d] (hidden's dtype) and [V, d] (fp32) when
    gradients are needed. Checking labels costs one host sync per call.
    """
    cd = _validate(hidden, weight, labels, chunk, compute_dtype)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels, chunk, cd)
    with torch.no_grad():
        return _fused(hidden, weight, labels, chunk, cd, False, False)[0]


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk, compute_dtype):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, grad_h, grad_w = _fused(hidden, weight, labels, chunk, compute_dtype, need_h, need_w)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        # out of place: the saved gradients stay valid for a retained graph's second backward
        dh = None if grad_h is None else grad_h * grad_out
        dw = None if grad_w is None else (grad_w * grad_out).to(ctx.weight_dtype)
        return dh, dw, None, None, None


def _fused(hidden, weight, labels, chunk, cd, need_h, need_w):
    """(loss, grad_hidden or None, grad_weight in the accumulator dtype or None), no autograd."""
    device = hidden.device
    with torch.autocast(device.type, enabled=False):
        t, d = hidden.shape
        v = weight.shape[0]
        acc = accumulator_dtype(cd)
        h = hidden.detach().to(cd).contiguous()
        w = weight.detach().to(cd).contiguous()
        y = labels.contiguous()
        _check_labels(y, v)
        step = _ce_step(h)
        need_grad = need_h or need_w
        losses = torch.empty(t, dtype=acc, device=device)
        grad_h = torch.empty(t, d, dtype=hidden.dtype, device=device) if need_h else None
        grad_w = torch.zeros(v, d, dtype=acc, device=device) if need_w else None
        # rows padded to 16 elements: every row starts aligned for the kernel's vector loads
        # (the GEMMs take the padded stride as their leading dimension, no copy)
        buf = torch.empty(min(chunk, t), -(-v // 16) * 16, dtype=cd, device=device)[:, :v]
        for s in range(0, t, chunk):
            e = min(s + chunk, t)
            logits = buf[:e - s]
            torch.mm(h[s:e], w.t(), out=logits)
            step(logits, y[s:e], losses[s:e], need_grad)  # logits now hold d(loss)/d(logits)
            if need_h:
                _gemm(logits, w, grad_h[s:e], accumulate=False)
            if need_w:
                _gemm(logits.t(), h[s:e], grad_w, accumulate=True)
        loss = losses.sum().to(accumulator_dtype(hidden.dtype))
    return loss, grad_h, grad_w


def _ce_step(h):
    use_triton, interpret = triton_mode(h, _TRITON_DTYPES)
    if not use_triton:
        return ce_rows_torch
    kernels = load_kernels("distca_kernels.linear_ce.triton_ce", interpret)

    def step(logits, labels, losses, write_grad):
        kernels.ce_rows(logits, labels, losses, write_grad, max_block_v=_MAX_BLOCK_V,
                        ignore_index=IGNORE_INDEX)
    return step


def _gemm(a, b, out, accumulate):
    """out (+)= a @ b with a, b in the compute dtype and out possibly wider (fp32 grads of bf16
    GEMMs): the wide output is written by the GEMM itself where the backend can, so a chunk's
    contribution is never rounded to 16 bits before it is summed."""
    if a.dtype == out.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif out.dtype == torch.float32 and _gemm_writes_fp32(a.device, a.dtype):
        if accumulate:
            torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        else:
            torch.mm(a, b, out_dtype=torch.float32, out=out)
    else:
        if a.device.type == "cpu":  # no 16-bit -> fp32 GEMM: upcast (exact) and multiply wide
            wide = torch.promote_types(a.dtype, out.dtype)
            a, b = a.to(wide), b.to(wide)
        prod = torch.mm(a, b)
        if accumulate:
            out.add_(prod)
        else:
            out.copy_(prod)


def _gemm_writes_fp32(device, dtype) -> bool:
    """Whether mm/addmm take out_dtype=float32 for `dtype` operands here (CUDA fp16/bf16 in
    recent torch; aten's older addmm.dtype_out wants `self` in the operands' dtype). Probed once
    per device and dtype, result checked, so a backend without it falls back instead of
    failing."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return False
    key = (str(device), dtype)
    if key not in _fp32_out_ok:
        try:
            a = torch.ones(2, 2, dtype=dtype, device=device)
            c = torch.ones(2, 2, dtype=torch.float32, device=device)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            m = torch.empty(2, 2, dtype=torch.float32, device=device)
            torch.mm(a, a, out_dtype=torch.float32, out=m)
            _fp32_out_ok[key] = bool((c == 3).all() and (m == 2).all())
        except (RuntimeError, TypeError, NotImplementedError):
            _fp32_out_ok[key] = False
    return _fp32_out_ok[key]


def _check_labels(labels, v):
    bad = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= v)
    if labels.numel() and bool(bad.any()):  # the one host sync of a call
        raise ValueError(f"labels must lie in [0, {v}) (the vocabulary) or be {IGNORE_INDEX}, "
                         f"got {labels[bad][:4].tolist()} among others")


def _validate(hidden, weight, labels, chunk, compute_dtype):
    for name, x in (("hidden", hidden), ("weight", weight)):
        require_float_tensor(name, x)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")
    require_tensor("labels", labels)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must be [V, d] with d = {hidden.shape[1]} as in hidden, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError("weight must have at least one row (the vocabulary is empty)")
    if labels.dtype != torch.int64 or tuple(labels.shape) != (hidden.shape[0],):
        raise ValueError(f"labels must be an int64 tensor of shape [T] = [{hidden.shape[0]}], "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if weight.device != hidden.device or labels.device != hidden.device:
        raise ValueError("hidden, weight and labels must be on one device")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if compute_dtype is not None and compute_dtype not in FLOAT_DTYPES:
        raise ValueError(f"compute_dtype must be None or a float16/bfloat16/float32/float64 "
                         f"dtype, got {compute_dtype!r}")
    return hidden.dtype if compute_dtype is None else compute_dtype
