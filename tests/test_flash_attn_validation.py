"""Bad input raises ValueError naming the argument; CPU without the interpreter is the reference."""
from __future__ import annotations

import pytest
import torch

from distca_kernels.flash_attn import (attention_varlen_reference, flash_attn_varlen_func, merge_attention_partials,
                                merge_partials_reference)
from tests.test_flash_attn_helpers import cu_from_lengths


@pytest.fixture(autouse=True)
def no_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def qkv(tq=10, tk=10, hq=4, hkv=2, d=16, dtype=torch.float32):
    return torch.randn(tq, hq, d, dtype=dtype), torch.randn(tk, hkv, d, dtype=dtype), torch.randn(tk, hkv, d, dtype=dtype)


def call(q, k, v, cu_q=None, cu_k=None, mq=10, mk=10, **kw):
    cu_q = cu_from_lengths([4, 6]) if cu_q is None else cu_q
    cu_k = cu_from_lengths([4, 6]) if cu_k is None else cu_k
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, **kw)


@pytest.mark.parametrize("make,match", [
    (lambda: (torch.randn(10, 16), *qkv()[1:]), "q must be a 3-D"),
    (lambda: (qkv()[0], torch.randn(10, 2, 16, dtype=torch.float16), qkv()[2]), "k and v must have q's dtype"),
    (lambda: (qkv()[0].int(), *qkv()[1:]), "q must be float16"),
    (lambda: (qkv()[0], qkv()[1], torch.randn(10, 1, 16)), "k and v must have the same shape"),
    (lambda: qkv(hq=6, hkv=4), "multiple of k/v heads"),
    (lambda: (torch.randn(10, 4, 32), *qkv()[1:]), "k head_dim 16 must equal q head_dim 32"),
])
def test_bad_tensors(make, match):
    with pytest.raises(ValueError, match=match):
        call(*make())


@pytest.mark.parametrize("cu_q,cu_k,mq,match", [
    (torch.tensor([0, 6, 4, 10], dtype=torch.int32), torch.tensor([0, 4, 4, 10], dtype=torch.int32), 10,
     "cu_seqlens_q must be non-decreasing"),
    (torch.tensor([1, 4, 10], dtype=torch.int32), None, 10, "cu_seqlens_q must start at 0"),
    (None, torch.tensor([0, 4, 9], dtype=torch.int32), 10, "cu_seqlens_k must end at the token count 10"),
    (torch.tensor([0.0, 4.0, 10.0]), None, 10, "cu_seqlens_q must be int32"),
    (torch.tensor([[0, 4, 10]], dtype=torch.int32), None, 10, "cu_seqlens_q must be a 1-D"),
    (None, torch.tensor([0, 10], dtype=torch.int32), 10, "same number of segments"),
    (None, None, 5, "max_seqlen_q \\(5\\) is smaller than the longest segment"),
    (None, None, -1, "max_seqlen_q must be a non-negative int"),
    (None, None, "10", "max_seqlen_q must be a non-negative int"),
])
def test_bad_cu_seqlens(cu_q, cu_k, mq, match):
    with pytest.raises(ValueError, match=match):
        call(*qkv(), cu_q=cu_q, cu_k=cu_k, mq=mq)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "0.1", 0.0, -0.125])
def test_bad_scale(scale):
    with pytest.raises(ValueError, match="softmax_scale must be a positive finite number"):
        call(*qkv(), softmax_scale=scale)


def test_cu_seqlens_modified_in_place_is_checked_again():
    cu = cu_from_lengths([4, 6])
    call(*qkv(), cu_q=cu, cu_k=cu.clone())
    cu[1] = 11  # now non-monotone; the cached validation must not hide it
    with pytest.raises(ValueError, match="non-decreasing"):
        call(*qkv(), cu_q=cu, cu_k=cu_from_lengths([4, 6]))


def test_bad_partials():
    o = torch.randn(5, 2, 8)
    lse = torch.randn(2, 5)
    with pytest.raises(ValueError, match="same length"):
        merge_attention_partials([o, o], [lse])
    with pytest.raises(ValueError, match=r"lses\[1\] must be \[heads, tokens\]"):
        merge_attention_partials([o, o], [lse, lse.T])
    with pytest.raises(ValueError, match=r"outs\[1\] has shape"):
        merge_attention_partials([o, o[:4]], [lse, lse])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_without_interpreter_is_exactly_the_reference(dtype):
    q, k, v = qkv(tq=7, tk=10, dtype=dtype)
    cu_q, cu_k = cu_from_lengths([3, 4]), cu_from_lengths([4, 6])
    o, lse = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 4, 6, softmax_scale=0.2, causal=True, return_lse=True)
    ro, rlse = attention_varlen_reference(q, k, v, cu_q, cu_k, 0.2, True)
    assert torch.equal(o, ro) and torch.equal(lse, rlse)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_merge_gradient_is_finite_where_no_partial_sees_a_key():
    """A query no rank's keys reach has lse = -inf in every partial; the merge must not send
    NaN gradients back into the partials (torch.logsumexp would)."""
    o = [torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    lse = [torch.tensor([[0.5, float("-inf"), 1.0]], dtype=torch.float64, requires_grad=True),
           torch.tensor([[float("-inf"), float("-inf"), 2.0]], dtype=torch.float64, requires_grad=True)]
    mo, mlse = merge_partials_reference(o, lse)
    assert mlse[0, 1] == float("-inf") and torch.all(mo[1] == 0)
    assert torch.allclose(mlse[0, 2], torch.logaddexp(torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)))
    (mo.sum() + torch.where(torch.isfinite(mlse), mlse, 0).sum()).backward()
    for t in o + lse:
        assert torch.isfinite(t.grad).all()
