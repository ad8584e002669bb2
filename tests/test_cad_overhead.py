"""What CAD costs per layer, checked on the CPU (what it costs in time is measured on a GPU:
benchmarks/cad_overlap_one_gpu.py).

- No host sync inside a layer: once a micro-batch is planned, a forward and backward over it
  make no call that reads a tensor back to the host (item, tolist, cpu, numpy, nonzero,
  bool, ...) from CAD's code, the model's nano-batch path or the sequence-parallel moves:
  recorded at cp=2 for nano-batches (stateful and resend), halves and auto, and at tp=2 x
  cp=2 with nano-batches. Python-level calls go through a TorchFunctionMode (not active in
  autograd's backward); the aten ops that read back (`_local_scalar_dense` under item and
  bool, nonzero, unique, masked_select) through a TorchDispatchMode, which is, each
  attributed to the nearest Python frame outside torch.
- A plan that moves nothing runs in place: on one process the call is the kernel straight on
  q, k, v (no pooled buffer, no gather, no scatter); where the rank's pieces are not its
  kernel's segments in order the in-place call gathers and scatters, and matches the
  reference in outputs and gradients (fp64).
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from distca.config import compose_config, to_typed
from distca.data.labels import next_token_labels
from distca_kernels.flash_attn.reference import attention_varlen_reference
from parallel.cad.dispatch import transfers
from parallel.cad.in_place import InPlaceAttention, in_place_layout, moves_nothing
from parallel.cad.tasks import PieceTable
from parallel.config import CADConfig, ModelShape, ParallelConfig
from parallel.context.shard import build_shard
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed

SYNCS = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__",
         "unique", "masked_select", "repeat_interleave", "argwhere",
         # the aten ops that read back
         "_local_scalar_dense", "_unique2", "unique_dim", "unique_consecutive"}
WATCHED = ("/parallel/cad/", "/parallel/tensor/", "/distca/model/")
DOCS = [9, 14, 5, 20, 7, 11, 30]  # 96 tokens


def _caller(depth: int) -> str:
    f = sys._getframe(depth)
    while f is not None and "/torch/" in f.f_code.co_filename:
        f = f.f_back
    return f.f_code.co_filename if f is not None else ""


class _Functions(TorchFunctionMode):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        caller = _caller(2)
        if any(w in caller for w in WATCHED):
            self.out.append((getattr(func, "__name__", str(func)), caller.split("/")[-1]))
        return func(*args, **(kwargs or {}))


class _Ops(TorchDispatchMode):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        caller = _caller(2)
        if any(w in caller for w in WATCHED):
            self.out.append((func.overloadpacket.__name__, caller.split("/")[-1]))
        return func(*args, **(kwargs or {}))


class Recorder:
    """Every torch function and aten op called directly from the watched code, by name."""

    def __enter__(self):
        self.calls = []
        self._modes = [_Functions(self.calls), _Ops(self.calls)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


def _step(model, ids, shard, labels):
    model.zero_grad(set_to_none=True)
    model(ids, shard, labels).backward()


def _no_sync_worker(rank, world, cases):
    for tp, cp, options in cases:
        mcfg = to_typed(compose_config(["experiment=tiny", "model.layers=SLS"])).model
        cfg = ParallelConfig(tp=tp, cp=cp, cp_algo="cad",
                             cad=CADConfig(tolerance=0.0, block=2, cost_table="none", **options))
        plan = ParallelPlan(cfg, ModelShape(mcfg.heads, mcfg.kv_heads, "SLS", mcfg.ffn_hidden), world)
        plan.setup()
        from distca.parallelize.apply import build_parallel_model
        run_cfg = to_typed(compose_config(["experiment=tiny", "model.layers=SLS"]))
        model = build_parallel_model(run_cfg, plan, 64, torch.device("cpu"), 1).model.double().train()
        tokens = torch.randint(0, 64, (sum(DOCS),), generator=torch.Generator().manual_seed(0))
        shard = plan.build_shard(DOCS)
        ids, labels = shard.local(tokens), shard.local(next_token_labels(tokens, DOCS))
        _step(model, ids, shard, labels)  # plans the micro-batch (collectives, host reads)
        with Recorder() as rec:
            _step(model, ids, shard, labels)
        syncs = [c for c in rec.calls if c[0] in SYNCS]
        assert rec.calls, "the recorder saw nothing: the check would pass vacuously"
        assert not syncs, f"tp={tp} cp={cp} {options}: host reads inside layers {syncs}"
        m = plan.core_attention.step_metrics()
        if options.get("overlap") == "nanobatch":
            assert m["cad_overlap"] == 2, m


@pytest.mark.slow
def test_no_host_sync_inside_a_layer():
    run_distributed(_no_sync_worker, 2, [(1, 2, {"overlap": "nanobatch"}),
                                         (1, 2, {"overlap": "nanobatch", "backward": "resend"}),
                                         (1, 2, {"overlap": "halves"}),
                                         (1, 2, {"link_gbps": 1e-6})])
    run_distributed(_no_sync_worker, 4, [(2, 2, {"overlap": "nanobatch"})])


def test_one_process_runs_the_kernel_straight_on_q_k_v():
    from parallel.cad.attention import CADAttention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(DOCS), h, 16, generator=g, dtype=torch.float64).requires_grad_()
               for h in (4, 2, 2))
    shard = build_shard(DOCS)
    for overlap in ("halves", "none", "auto"):
        cad = CADAttention(options=CADConfig(cost_table="none", block=2, tolerance=0.0, overlap=overlap))
        cad(q, k, v, shard, 0.25).sum().backward()  # plans
        with Recorder() as rec:
            cad(q, k, v, shard, 0.25).sum().backward()
        moved = [c for c in rec.calls if c[0] in ("index_select", "cat", "index_copy_", "index_add_",
                                                   "new_zeros", "index_copy", "index_add")]
        assert not moved, (overlap, moved)
        assert cad.step_metrics()["cad_overlap"] == 0  # none: nothing to overlap


def test_in_place_gathers_when_pieces_are_out_of_order():
    # one rank: document 0's second half sits before its first half in local order
    pieces = PieceTable(rank=np.array([0, 0, 0]), doc=np.array([0, 0, 1]), start=np.array([5, 0, 0]),
                        length=np.array([5, 5, 4]), local=np.array([0, 5, 10]))
    tasks = pieces.tasks()
    tr = transfers(tasks, tasks.owner, pieces)
    assert moves_nothing(tr)
    P = in_place_layout(tr, pieces, 0, 14)
    assert P.q_tok is not None and P.k_tok is not None  # not the rank's order: gathers
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(14, h, 8, generator=g, dtype=torch.float64).requires_grad_() for h in (4, 2, 2))
    w = torch.randn(14, 4, 8, generator=g, dtype=torch.float64)
    (InPlaceAttention.apply(q, k, v, P, 0.3) * w).sum().backward()
    natural = torch.tensor([5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 10, 11, 12, 13])  # document order
    leaves = [x.detach()[natural].clone().requires_grad_() for x in (q, k, v)]
    cu = torch.tensor([0, 10, 14], dtype=torch.int32)
    o, _ = attention_varlen_reference(*leaves, cu, cu, 0.3, True)
    (o * w[natural]).sum().backward()
    for name, got, ref in zip("qkv", (q, k, v), leaves):
        torch.testing.assert_close(got.grad[natural], ref.grad, msg=f"d{name}")
    with torch.no_grad():
        torch.testing.assert_close(InPlaceAttention.apply(q, k, v, P, 0.3)[natural], o)

