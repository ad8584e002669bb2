"""The dedicated CAD attention pool (`parallel.cad.pool` = K): K extra ranks per TP position
that hold no weights and serve all core attention.

Config time: the world size counts the pool, and every impossible combination is a clear
error naming the field. Groups: each TP position's CAD group is its DP x CP ranks plus its
pool ranks. Training (fp32, experiment=tiny, documents of mixed lengths, gloo) gives the loss
of one process, with every attention task run on the pool (moved work = 1), and pool ranks
holding no parameter bytes:
- 3 ranks: cp=2 + pool=1 with full recompute (overlap auto); nano-batches on the hybrid SLSS;
  the resend backward; and a checkpoint written at step 2 resumes to the same trajectory;
- 4 ranks: dp=2 + pool=2 (selective recompute); tp=2 + pool=1 (one pool rank per TP position).
"""
import pytest

from distca.train import train
from parallel.config import ParallelConfig, ModelShape
from parallel.dims import ParallelDims, _pool_groups
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed
from tests.train_utils import (assert_grad_norm, assert_parity, losses, mixed_corpus,
                               single_process_refs, tiny_cfg)

STEPS = ["train.steps=4", "train.dtype=fp32"]
CAD = ["parallel.cp_algo=cad", "parallel.cad.block=8", "parallel.cad.tolerance=0.0"]
SHAPE = ModelShape(heads=4, kv_heads=2, layers="SSSS")
RUNS = {
    3: [("cp=2 pool=1 full recompute", [], ["parallel.cp=2", "model.recompute=full"]),
        ("cp=2 pool=1 nanobatch SLSS", ["model.layers=SLSS"],
         ["parallel.cp=2", "parallel.cad.overlap=nanobatch", "model.recompute=full"]),
        ("cp=2 pool=1 resend", [], ["parallel.cp=2", "parallel.cad.backward=resend"])],
    4: [("dp=2 pool=2 selective", ["model.recompute=selective"],
         ["parallel.dp=2", "parallel.cad.pool=2"]),
        ("tp=2 pool=1", [], ["parallel.tp=2"])],
}


def _plan(world, **over):
    cad = {k: over.pop(k) for k in list(over) if k in ("pool", "servers")}
    cfg = ParallelConfig(cp_algo=over.pop("cp_algo", "cad"), **over)
    for k, v in cad.items():
        setattr(cfg.cad, k, v)
    return ParallelPlan(cfg, SHAPE, world)


def test_world_size_counts_the_pool():
    dims = _plan(3, cp=2, pool=1).dims
    assert (dims.world_size, dims.model_world, dims.dp, dims.pool) == (3, 2, 1, 1)
    dims = _plan(6, tp=2, pool=1).dims  # one pool rank per TP position
    assert (dims.model_world, dims.dp) == (4, 2)
    assert dims.is_pool(4) and dims.pool_coords(5) == (0, 1) and not dims.is_pool(3)


@pytest.mark.parametrize("world, over, words", [
    (2, dict(cp=2, pool=1), ["parallel.cad.pool=1", "leaves 1 model ranks", "launch 3 processes"]),
    (1, dict(pool=1), ["parallel.cad.pool=1", "leave no model ranks"]),
    (3, dict(cp=2, pool=1, cp_algo="ring"), ["parallel.cad.pool=1", "parallel.cp_algo=cad"]),
    (5, dict(pp=2, cp=2, pool=1), ["parallel.pp=2", "parallel.cad.pool=0"]),
    (3, dict(cp=2, pool=1, zero_stage=1), ["parallel.zero_stage=1"]),
    (3, dict(cp=2, pool=1, servers=1), ["parallel.cad.servers=0"]),
    (3, dict(cp=2, pool=-1), ["parallel.cad.pool=-1", ">= 0"]),
])
def test_bad_pool_configs_name_the_field(world, over, words):
    with pytest.raises(ValueError) as e:
        _plan(world, **over)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_pool_joins_the_cad_group_of_its_tp_position():
    # tp innermost: model ranks 0-3 are (cp0,tp0) (cp0,tp1) (cp1,tp0) (cp1,tp1); the pool's
    # rank for TP position t is 4 + t
    groups = _pool_groups(ParallelDims.resolve(6, tp=2, cp=2, pool=1))
    assert groups["cad_group"] == [[0, 2, 4], [1, 3, 5]]
    assert groups["model_group"] == [[0, 1, 2, 3]]
    assert groups["tp_group"] == [[4, 5]]


def _pool_runs(rank, world, refs, tmp, data):
    import torch.distributed as dist

    for i, (label, model, over) in enumerate(RUNS[world]):
        cfg = tiny_cfg(f"{tmp}/w{world}_{i}", *STEPS, *data, *CAD, "parallel.cad.pool=1", *model, *over)
        history = train(cfg)
        dist.barrier()
        pool = 2 if "parallel.cad.pool=2" in over else 1 + ("parallel.tp=2" in over)
        if rank < world - pool:  # the loss lives on the model ranks (a pool rank's is empty)
            ref_losses, ref_norm = refs[tuple(model)]
            assert_parity(ref_losses, losses(history), label=label)
            assert_grad_norm(ref_norm, history, label)
        # the pool is the only server: all attention ran there, balanced over its ranks
        assert all(m["cad_moved_work"] == 1.0 for m in history), label
        assert all(m["cad_imbalance_after"] < 1.05 for m in history), label
    if world == 3:  # a checkpoint at step 2 (the pool saves nothing) resumes the trajectory
        run = [*STEPS[1:], *data, *CAD, "parallel.cad.pool=1", "parallel.cp=2"]
        train(tiny_cfg(f"{tmp}/resume", "train.steps=2", "checkpoint.save_final=true", *run))
        dist.barrier()
        resumed = train(tiny_cfg(f"{tmp}/resume", "train.steps=4", *run))
        dist.barrier()
        assert [m["step"] for m in resumed] == [3, 4]
        if rank < 2:
                assert_parity(refs[()][0][2:], losses(resumed), step1_rtol=1e-4, label="pool resume")


def _no_weight_bytes(rank, world):
    """A pool rank's parameters are stride-0 views of one element each."""
    import torch

    from distca.config import compose_config, to_typed
    from distca.model import build_model
    from distca.parallelize.pool_rank import make_pool_rank
    cfg = to_typed(compose_config(["experiment=tiny"]))
    model = build_model(cfg.model, 64, None, None, 0)
    make_pool_rank(model)
    assert all(p.untyped_storage().nbytes() == p.element_size() for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    assert model.embed_tokens(torch.zeros(0, dtype=torch.long)).requires_grad


def test_pool_rank_holds_no_parameter_bytes():
    _no_weight_bytes(0, 1)


@pytest.mark.slow
@pytest.mark.parametrize("world", sorted(RUNS))
def test_pool_training_matches_single_process(tmp_path, world):
    data = mixed_corpus(tmp_path / "docs.jsonl")
    refs = single_process_refs(tmp_path, RUNS[world], *STEPS, *data)
    run_distributed(_pool_runs, world, refs, str(tmp_path), data)
