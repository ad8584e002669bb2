"""CAD pooled across pipeline stages (`parallel.cad.pipeline=joint`, DistCA's 4D schedule):
lock-step 1F1B ticks, each all-forward or all-backward, every tick's core attention planned
over the DP x PP x CP ranks of a TP position, idle stages serving through dummy passes.

- the lock-step timeline runs every action once, respects the pipeline's dependencies, and
  takes as many ticks as the ordinary 1F1B timeline;
- the CAD group spans the stages;
- impossible settings are config errors naming the field;
- training (fp32, experiment=tiny, documents of mixed lengths, gloo) gives the loss of one
  process at pp=2 (world 2), pp=3 (world 3, odd), and at world 4 cp=2 x pp=2 on the hybrid
  LSLS with full recompute (LASP-2 in the dummies too), dp=2 x pp=2 with selective
  recompute, and tp=2 x pp=2 with full recompute; attention really moves between ranks.
"""
import pytest

from distca.train import train
from parallel.config import ModelShape, ParallelConfig
from parallel.dims import ParallelDims, _groups_along
from parallel.pipeline.timeline import Action, lockstep_timeline, tick_kind, timeline
from parallel.plan import ParallelPlan
from tests.distributed_utils import run_distributed
from tests.train_utils import (assert_grad_norm, assert_parity, losses, mixed_corpus,
                               single_process_refs, tiny_cfg)

STEPS = ["train.steps=3", "train.dtype=fp32"]
JOINT = ["parallel.cp_algo=cad", "parallel.cad.pipeline=joint", "parallel.cad.backward=resend",
         "parallel.cad.overlap=halves", "parallel.cad.block=8", "parallel.cad.tolerance=0.0"]
RUNS = {
    2: [("pp=2", [], ["parallel.pp=2"])],
    3: [("pp=3", ["model.layers=SSSSSS", "train.global_batch_size=5"], ["parallel.pp=3"])],
    4: [("cp=2 pp=2 LSLS full recompute", ["model.layers=LSLS", "model.recompute=full"],
         ["parallel.pp=2", "parallel.cp=2"]),
        ("dp=2 pp=2 selective", ["model.recompute=selective"], ["parallel.pp=2", "parallel.dp=2"]),
        ("tp=2 pp=2 full recompute", ["model.recompute=full"], ["parallel.pp=2", "parallel.tp=2"])],
}


@pytest.mark.parametrize("pp, m", [(2, 1), (2, 4), (3, 5), (4, 8), (5, 3)])
def test_lockstep_timeline_is_a_valid_1f1b(pp, m):
    ticks = lockstep_timeline(pp, m)
    when = {}
    for t, row in enumerate(ticks):
        kinds = {a.forward for a in row if a is not None}
        assert len(kinds) == 1 and tick_kind(row) in kinds, row  # one kind per tick
        for r, a in enumerate(row):
            if a is not None:
                assert a.chunk == r and a not in when
                when[a] = t
    assert len(when) == 2 * pp * m  # every forward and backward of every stage, once
    for a, t in when.items():
        if a.forward:
            need = Action(True, a.chunk - 1, a.micro_batch) if a.chunk else None
        elif a.chunk == pp - 1:
            need = Action(True, a.chunk, a.micro_batch)
        else:
            need = Action(False, a.chunk + 1, a.micro_batch)
        assert need is None or when[need] < t, (a, need)
    assert len(ticks) == len(timeline(pp, 1, m))  # no longer than the mixed 1F1B


def test_joint_cad_group_spans_the_stages():
    dims = ParallelDims.resolve(8, dp=2, pp=2, cp=1, tp=2)
    # tp innermost, then cp, pp, dp: the TP-position-0 ranks of every (dp, pp)
    assert _groups_along(dims, "dpppcp") == [[0, 2, 4, 6], [1, 3, 5, 7]]


def _plan(world, layers="SSSS", **over):
    cad = {k: over.pop(k) for k in list(over) if k in ("backward", "pipeline", "overlap")}
    cfg = ParallelConfig(cp_algo="cad", **over)
    for k, v in {"pipeline": "joint", "backward": "resend", "overlap": "halves", **cad}.items():
        setattr(cfg.cad, k, v)
    return ParallelPlan(cfg, ModelShape(heads=4, kv_heads=2, layers=layers), world)


@pytest.mark.parametrize("world, layers, over, words", [
    (1, "SSSS", {}, ["parallel.cad.pipeline=joint", "parallel.pp > 1"]),
    (2, "SSSS", dict(pp=2, backward="stateful"), ["parallel.cad.backward=resend"]),
    (2, "SSSS", dict(pp=2, overlap="nanobatch"), ["parallel.cad.overlap=halves"]),
    (2, "SSSS", dict(pp=2, pp_schedule="interleaved", pp_virtual=2), ["parallel.pp_schedule=1f1b"]),
    (2, "SSSL", dict(pp=2, pp_split=[2, 2]), ["same number of softmax layers", "parallel.pp_split"]),
])
def test_bad_joint_configs_name_the_field(world, layers, over, words):
    with pytest.raises(ValueError) as e:
        _plan(world, layers, **over)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_joint_plan_is_in_effect_only_with_pipeline_stages():
    assert _plan(2, pp=2).joint_pipeline
    assert not _plan(2, pp=2, pipeline="stage").joint_pipeline


def _joint_runs(rank, world, refs, tmp, data):
    import torch.distributed as dist

    for i, (label, model, over) in enumerate(RUNS[world]):
        history = train(tiny_cfg(f"{tmp}/w{world}_{i}", *STEPS, *data, *JOINT, *model, *over))
        dist.barrier()
        ref_losses, ref_norm = refs[tuple(model)]
        assert_parity(ref_losses, losses(history), label=label)
        assert_grad_norm(ref_norm, history, label)  # gradients over every stage, before any update
        # tolerance 0 on imbalanced documents: every step moves attention between ranks
        assert all(0 < m["cad_moved_work"] < 1 for m in history), label
        assert all(m["cad_imbalance_after"] < m["cad_imbalance_before"] for m in history), label


@pytest.mark.slow
@pytest.mark.parametrize("world", sorted(RUNS))
def test_joint_pipeline_training_matches_single_process(tmp_path, world):
    data = mixed_corpus(tmp_path / "docs.jsonl")
    refs = single_process_refs(tmp_path, RUNS[world], *STEPS, *data)
    run_distributed(_joint_runs, world, refs, str(tmp_path), data)
