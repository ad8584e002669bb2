"""Held-out evaluation: the loss it reports is the forward loss on held-out data, logged beside
the training metrics, and the same at every parallel layout."""
import contextlib
import json
import math

import pytest
import torch
import torch.nn.functional as F

from distca.config import to_typed
from distca.data import DataConfig, build_dataset, build_documents
from distca.evaluation.held_out import eval_loss
from distca.data.labels import next_token_labels
from distca.model import build_model
from distca.parallelize.tensor_parallel import apply_tensor_parallel
from distca.train import ConfigError, train
from distca.config.validate import build_plan
from tests.distributed_utils import run_distributed
from tests.train_utils import assert_parity, tiny_cfg

SYNTH = ["data=synthetic_pretrain", "data.synthetic_vocab=512", "data.synthetic_tokens=65536"]
EVAL = ["eval.every=1", "eval.batches=2"]


def test_eval_loss_is_the_forward_loss_on_held_out_samples(tmp_path):
    cfg = to_typed(tiny_cfg(tmp_path, *SYNTH, *EVAL))
    cpu = torch.device("cpu")
    plan = build_plan(cfg, 1, 512)
    plan.setup(cpu)
    model = apply_tensor_parallel(build_model(cfg.model, 512, plan.core_attention,
                                              plan.linear_attention, cfg.train.seed), None)
    got = eval_loss(cfg, plan, model, None, contextlib.nullcontext(), cpu)

    # by hand: full logits and torch's cross-entropy over the first 2 x 4 held-out samples
    _, held_out = build_dataset(cfg.data, cfg.train.seed, split="eval")
    _, training = build_dataset(cfg.data, cfg.train.seed)
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(2 * cfg.train.global_batch_size):
            s = held_out.next_sample()
            assert not torch.equal(s.tokens, training.next_sample().tokens)  # another stream
            shard = plan.build_shard(s.doc_lens)
            hidden = model(shard.local(s.tokens), shard)
            labels = shard.local(next_token_labels(s.tokens, s.doc_lens))
            total += F.cross_entropy(hidden @ model.lm_head.weight.T, labels, reduction="sum").item()
            count += int((labels != -100).sum())
    assert abs(got - total / count) <= 1e-5 * got, (got, total / count)
    assert 5.5 < got < 7.5  # an untrained model: about ln(512) = 6.24


def test_held_out_documents_leave_the_training_stream():
    cfg = DataConfig(max_documents=20, holdout=0.1)
    _, full = build_documents(DataConfig(max_documents=20), 0)
    _, kept = build_documents(cfg, 0)
    _, held = build_documents(cfg, 0, split="eval")
    assert (len(kept), len(held)) == (18, 2)  # the last ceil(0.1 x 20) documents
    for i in range(2):
        assert (held.tokens(i) == full.tokens(18 + i)).all()
    with pytest.raises(ValueError, match=r"data.holdout=0.99 holds out 20 of 20"):
        build_documents(DataConfig(max_documents=20, holdout=0.99), 0)


def test_eval_metrics_logged_beside_training_metrics(tmp_path):
    hist = train(tiny_cfg(tmp_path, *SYNTH, "train.steps=3", "eval.every=2", "eval.batches=1"))
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [("eval_loss" in r) for r in rows] == [False, True, True]  # every 2 steps and the last
    for r, h in zip(rows, hist):
        assert r.get("eval_loss") == h.get("eval_loss")
    assert rows[2]["eval_ppl"] == pytest.approx(math.exp(rows[2]["eval_loss"]))
    assert rows[2]["eval_loss"] < rows[1]["eval_loss"]  # one more step on the same language


def test_eval_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"data.holdout=0 .*Fix: add data.holdout=0.01"):
        train(tiny_cfg(tmp_path, "eval.every=5"))  # stdlib text: nothing held out
    with pytest.raises(ConfigError, match=r"eval.batches=-1 must be >= 0"):
        train(tiny_cfg(tmp_path, *SYNTH, "eval.every=5", "eval.batches=-1"))


def _layouts(rank, world, ref, tmp):
    import torch.distributed as dist
    layouts = (["parallel.dp=2"], ["parallel.cp=2", "parallel.cp_algo=ring"], ["parallel.pp=2"])
    for i, layout in enumerate(layouts):
        got = [m["eval_loss"] for m in train(tiny_cfg(f"{tmp}/layout{i}", *SYNTH, *EVAL,
                                                      "train.steps=2", *layout))]
        dist.barrier()
        assert_parity(ref, got, label=" ".join(layout))


@pytest.mark.slow
def test_eval_loss_equal_at_dp2_cp2_pp2(tmp_path):
    ref = [m["eval_loss"] for m in train(tiny_cfg(tmp_path / "ref", *SYNTH, *EVAL, "train.steps=2"))]
    run_distributed(_layouts, 2, ref, str(tmp_path))
