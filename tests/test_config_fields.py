"""Every config field the parallel plan owns: a good value reaches the component that uses it,
a bad value fails before any process group or forward, naming the field (and the fix).

Fields: parallel.cp_layout, parallel.kv_head_groups, parallel.cad.memory_cap,
parallel.cad.cost_table (new), train.collective_timeout_s (was an environment variable),
and the cross-field rules the plan checks at config time (heads vs Ulysses degrees, layouts vs
LASP-2, CAD servers vs the CAD group). A torchrun job with a bad value prints the error once.
"""
import os
import subprocess
import sys

import pytest
from distca.config import compose_config, to_typed
from distca.config.errors import ConfigError
from distca.config.validate import build_plan
from tests.distributed_utils import run_distributed
from tests.train_utils import TINY


def plan_for(*overrides, world=1):
    return build_plan(to_typed(compose_config([*TINY, *overrides])), world)


def plan_error(*overrides, world=1) -> str:
    with pytest.raises(ValueError) as e:
        plan_for(*overrides, world=world)
    return str(e.value)


def composition_error(*overrides) -> str:
    with pytest.raises(ConfigError) as e:  # Hydra's error, as our one line
        compose_config([*TINY, *overrides])
    return str(e.value)


def test_cp_layout():
    assert plan_for("parallel.cp=2", "parallel.cp_algo=ring", world=2).layout == "zigzag"  # auto
    assert plan_for("parallel.cp=2", "parallel.cp_algo=ulysses", world=2).layout == "contiguous"
    assert plan_for("parallel.cp=2", "parallel.cp_algo=ring", "parallel.cp_layout=head_tail",
                    world=2).layout == "head_tail"
    assert "parallel.cp_layout" in composition_error("parallel.cp_layout=spiral")
    assert "zigzag, head_tail" in composition_error("parallel.cp_layout=spiral")
    msg = plan_error("parallel.cp=2", "parallel.cp_algo=ring", "parallel.cp_layout=head_tail",
                     "model.layers=LLLS", world=2)
    assert "parallel.cp_layout=head_tail" in msg and "LASP-2" in msg and "zigzag" in msg


def test_kv_head_groups():
    assert plan_for("parallel.kv_head_groups=1").cfg.kv_head_groups == 1
    assert "parallel.kv_head_groups=0" in plan_error("parallel.kv_head_groups=0")
    assert "parallel.kv_head_groups" in composition_error("parallel.kv_head_groups=two")


def test_cad_memory_cap_and_cost_table(tmp_path):
    cad = ("parallel.cp_algo=cad",)
    assert plan_for(*cad, "parallel.cad.memory_cap=1e9").cfg.cad.memory_cap == 1e9
    assert "parallel.cad.memory_cap=-1" in plan_error(*cad, "parallel.cad.memory_cap=-1")
    assert "parallel.cad.memory_cap" in composition_error("parallel.cad.memory_cap=lots")
    table = tmp_path / "table.json"
    table.write_text("{}")
    for ok in ("auto", "h100", "none", str(table)):
        assert plan_for(*cad, f"parallel.cad.cost_table={ok}").cfg.cad.cost_table == ok
    msg = plan_error(*cad, "parallel.cad.cost_table=a100")
    assert "parallel.cad.cost_table='a100'" in msg and "profile_attention_cost" in msg
    # a named table that is not committed is an error, not a silent fall back to FLOPs
    from parallel.cad.tasks import TABLES
    if not os.path.exists(TABLES["h200"]):
        msg = plan_error(*cad, "parallel.cad.cost_table=h200")
        assert "parallel.cad.cost_table=h200" in msg and "cost_table_h200.json" in msg and "auto" in msg


def test_collective_timeout():
    assert plan_for("train.collective_timeout_s=60") is not None
    assert "train.collective_timeout_s=0" in plan_error("train.collective_timeout_s=0")


def test_cross_field_rules_fail_at_config_time():
    # the tiny model has 4 query heads, 2 KV heads
    assert "parallel.cp=3" in plan_error("parallel.cp=3", "parallel.cp_algo=ulysses", world=3)
    assert "parallel.ulysses=3" in plan_error("parallel.cp=6", "parallel.cp_algo=usp",
                                              "parallel.ulysses=3", world=6)
    msg = plan_error("parallel.cp=2", "parallel.cp_algo=cad", "parallel.cad.servers=3", world=2)
    assert "parallel.cad.servers=3" in msg and "[0, 2]" in msg
    assert "parallel.cad.block" in plan_error("parallel.cp_algo=cad", "parallel.cad.block=0")


def _values_reach_strategies(rank, world):
    from parallel.cad.attention import CADAttention
    from parallel.context.allgather import AllGatherAttention
    from parallel.context.lasp2 import Lasp2LinearAttention
    plan = plan_for("parallel.cp=2", "parallel.cp_algo=allgather", "parallel.kv_head_groups=1",
                    "parallel.cp_layout=contiguous", "model.layers=LS", world=world)
    plan.setup()
    assert isinstance(plan.core_attention, AllGatherAttention) and plan.core_attention.kv_head_groups == 1
    assert isinstance(plan.linear_attention, Lasp2LinearAttention)
    assert plan.build_shard([10, 7]).layout == "contiguous"
    plan = plan_for("parallel.cp=2", "parallel.cp_algo=cad", "parallel.cad.memory_cap=5e5",
                    "parallel.cad.cost_table=none", world=world)
    plan.setup()
    assert isinstance(plan.core_attention, CADAttention)
    assert (plan.core_attention.options.memory_cap, plan.core_attention.options.cost_table) == (5e5, "none")


def test_values_reach_the_strategies():
    run_distributed(_values_reach_strategies, 2)


@pytest.mark.slow
def test_torchrun_prints_a_config_error_once(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "distca.train", "experiment=tiny", "parallel.cp=2", "parallel.cp_algo=usp",
                        "parallel.ulysses=3", f"run_dir={tmp_path}"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert out.count("distca: config error: parallel.ulysses=3 must divide parallel.cp=2") == 1, out[-3000:]
    # no traceback from our processes (torchrun's own failure report is the launcher's)
    assert "distca/train.py" not in out and "parallel/plan.py" not in out, out[-3000:]
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, choices", [
    ("parallel.cp_algo=rnig", "local, ring, allgather, ulysses, usp, cad"),
    ("parallel.cad.backward=keep", "stateful, resend"),
    ("parallel.cad.overlap=always", "auto, none, halves, nanobatch"),
    ("train.device=tpu", "auto, cpu, cuda"),
    ("model.linear_decay=alibi", "head, token, none"),
    ("logger.mode=dryrun", "online, offline"),
    ("data.source=hdf5", "stdlib, jsonl, parquet, tokens, synthetic"),
    ("data.tokenizer=sentencepiece", "auto, byte, hf, bpe"),
])
def test_choice_fields_reject_unknown_values_at_composition(override, choices):
    msg = composition_error(override)
    assert override.split("=")[0] in msg and choices in msg, msg


def test_vocabulary_splits_evenly_over_tp():
    from types import SimpleNamespace

    from distca.startup import vocab_size as _vocab_size
    tok = SimpleNamespace(vocab_size=258)  # the byte tokenizer's
    cfg = lambda v: SimpleNamespace(model=SimpleNamespace(vocab_size=v))  # noqa: E731
    assert [_vocab_size(cfg(-1), tok, tp) for tp in (1, 2, 4, 8)] == [320] * 4  # same model
    assert _vocab_size(cfg(-1), tok, 3) == 384  # a multiple of 64 and of 3
    with pytest.raises(ValueError, match="model.vocab_size=300 must be divisible by parallel.tp=8"):
        _vocab_size(cfg(300), tok, 8)


def test_pipeline_fields():
    plan = plan_for("parallel.pp=2", world=2)
    assert [list(r) for r in plan.chunks] == [[0, 1], [2, 3]] and plan.chunks_of(1) == [1]
    # the LM head costs more than a tiny layer: the last chunk gets fewer layers
    plan = plan_for("parallel.pp=2", "model.vocab_size=50000", world=2)
    assert len(plan.chunks[0]) > len(plan.chunks[1])
    plan = plan_for("parallel.pp=2", "parallel.pp_split=[1,3]", world=2)
    assert [list(r) for r in plan.chunks] == [[0], [1, 2, 3]]
    plan = plan_for("parallel.pp=2", "parallel.pp_schedule=interleaved", "parallel.pp_virtual=2", world=2)
    assert [list(r) for r in plan.chunks] == [[0], [1], [2], [3]] and plan.chunks_of(0) == [0, 2]
    assert "1f1b, interleaved" in composition_error("parallel.pp_schedule=gpipe")
    assert "parallel.pp_schedule=interleaved" in plan_error("parallel.pp=2", "parallel.pp_virtual=2", world=2)
    assert "parallel.pp_virtual >= 2" in plan_error("parallel.pp=2", "parallel.pp_schedule=interleaved",
                                                    world=2)
    assert "pipeline chunks" in plan_error("parallel.pp=8", world=8)  # 4 layers
    assert "parallel.pp_split=[2, 3]" in plan_error("parallel.pp=2", "parallel.pp_split=[2,3]", world=2)
    assert "parallel.zero_stage=2" in plan_error("parallel.pp=2", "parallel.zero_stage=2", world=4)
    assert plan_for("parallel.pp=2", "parallel.zero_stage=1", world=4).cfg.zero_stage == 1
    msg = plan_error("parallel.pp=2", "parallel.pp_schedule=interleaved", "parallel.pp_virtual=2",
                     "train.global_batch_size=6", "model.layers=SSSSSSSS", "parallel.pp=4", world=4)
    assert "multiple of parallel.pp=4" in msg


def test_recompute_field_and_the_deprecated_key():
    from distca.model.transformer import deprecation_messages, recompute_mode

    def model(*overrides):
        return to_typed(compose_config([*TINY, *overrides])).model

    assert recompute_mode(model()).value == "none"
    assert recompute_mode(model("model.recompute=selective")).value == "selective"
    assert recompute_mode(model("model=1b")).value == "full"  # the large presets recompute
    assert deprecation_messages(model("model.recompute=full")) == []
    # the old key keeps working for one release, with a message naming the new one
    old = model("model.checkpoint_activations=true")
    assert recompute_mode(old).value == "full"
    assert "model.recompute=full" in deprecation_messages(old)[0]
    assert recompute_mode(model("model.checkpoint_activations=false")).value == "none"
    msg = plan_error("model.checkpoint_activations=true", "model.recompute=selective")
    assert "model.checkpoint_activations" in msg and "model.recompute=selective" in msg
    assert "model.recompute" in composition_error("model.recompute=some")


@pytest.mark.slow
def test_deprecated_key_warns_once_and_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    r = subprocess.run([sys.executable, "-m", "distca.train", *TINY, "train.steps=1",
                        "model.checkpoint_activations=true", f"run_dir={tmp_path}"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("model.checkpoint_activations is deprecated") == 1, r.stderr[-3000:]
    assert (tmp_path / "metrics.jsonl").exists()


def test_cad_overlap_combinations():
    """auto is CAD's default overlap (nano-batches among its choices); nano-batches run with TP
    and the resend backward, not with the joint pipeline (whose error names the fix), where
    auto runs halves."""
    cad = ["parallel.cp_algo=cad"]
    assert plan_for(*cad, "parallel.cp=2", world=2).cfg.cad.overlap == "auto"
    nano = [*cad, "parallel.cad.overlap=nanobatch"]
    assert plan_for(*nano, "parallel.tp=2", "parallel.cp=2", world=4).cfg.cad.overlap == "nanobatch"
    assert plan_for(*nano, "parallel.cp=2", "parallel.cad.backward=resend", world=2).cfg.cad.backward == "resend"
    joint = [*cad, "parallel.pp=2", "parallel.cad.pipeline=joint", "parallel.cad.backward=resend"]
    msg = plan_error(*joint, "parallel.cad.overlap=nanobatch", world=2)
    assert "parallel.cad.pipeline=joint" in msg and "parallel.cad.overlap=halves" in msg
    assert plan_for(*joint, world=2).joint_pipeline  # auto
    assert plan_for(*joint, "parallel.cad.overlap=halves", world=2).joint_pipeline
    assert "parallel.cad.link_gbps" in plan_error(*cad, "parallel.cad.link_gbps=-1", world=1)
