"""eval.tasks: loss by position and passkey retrieval, in the loop and by distca-eval.

- the passkey prompt has the asked length, the key where the depth says, and the answer at the
  end; a model that copies (an induction head written out here) scores 1.0, a random one 0;
- loss by position equals a hand computation with full logits;
- both tasks give the single process's values at tp=2, pp=2, ring cp=2 and cad cp=2;
- distca-eval on a run dir and on a Hugging Face folder prints the metrics as JSON;
- passkey on data without a text tokenizer is a config error.
"""
from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distca.data.tokenizer import ByteTokenizer
from distca.evaluation import passkey as pk
from tests.distributed_utils import run_distributed
from tests.train_utils import tiny_cfg

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_passkey_prompt_has_the_length_and_the_key_at_its_depth(depth):
    tok = ByteTokenizer()
    s = pk.make_sample(tok, 1000, depth, random.Random(0))
    assert len(s.tokens) == 1000
    text = tok.decode(s.tokens)
    assert text.endswith("The pass key is " + s.key) and len(s.key) == 5
    needle = text.index(f"The pass key is {s.key}. Remember it.")
    intro, tail = len(pk.INTRO), len(text) - len(pk.QUESTION) - len(s.key) - 1
    assert abs((needle - intro) / (tail - intro - len(pk.NEEDLE.format(key=s.key))) - depth) < 0.01
    assert tok.decode(s.tokens[s.answer_start:]).strip() == s.key  # the answer, its space included
    with pytest.raises(ValueError, match="too few for the passkey prompt"):
        pk.make_sample(tok, 100, depth, random.Random(0))


class Induction(torch.nn.Module):
    """A model that copies: at each position it predicts the token that followed the latest
    earlier occurrence of the last K tokens (an induction head, written out). Byte-level, one
    process: the shard's local order is the document order."""

    K = 16

    def __init__(self, vocab: int):
        super().__init__()
        self.lm_head = SimpleNamespace(weight=torch.eye(vocab))
        self.blocks, self.vocab = [], vocab

    def embed_tokens(self, ids):
        return ids

    def run_blocks(self, ids, shard, layers):
        ids = ids.tolist()
        out = torch.zeros(len(ids), self.vocab)
        for t in range(len(ids)):
            ctx = ids[max(0, t - self.K + 1):t + 1]
            for s in range(t - 1, len(ctx) - 2, -1):
                if ids[s - len(ctx) + 1:s + 1] == ctx:
                    out[t, ids[s + 1]] = 1.0
                    break
        return out

    def head(self, x, labels):
        return x


def _passkey_cfg(tmp_path, *extra):
    from distca.config import to_typed
    return to_typed(tiny_cfg(tmp_path, "eval.tasks=[passkey]", "eval.passkey.lengths=[300,600]",
                             "eval.passkey.depths=[0.1,0.9]", "eval.passkey.samples=2", *extra))


def test_a_copying_model_scores_one_and_a_random_one_zero(tmp_path):
    from distca.config.validate import build_plan
    from distca.evaluation.tasks import passkey_eval
    from distca.model import build_model
    cfg = _passkey_cfg(tmp_path)
    plan = build_plan(cfg, 1, 320)
    plan.setup(torch.device("cpu"))
    engine = SimpleNamespace(module=Induction(320))
    got = passkey_eval(cfg, plan, engine, None, contextlib.nullcontext(), torch.device("cpu"), ByteTokenizer())
    assert got["eval_passkey_acc"] == 1.0
    assert got["eval_passkey_grid"] == {"lengths": [300, 600], "depths": [0.1, 0.9], "acc": [[1.0, 1.0], [1.0, 1.0]]}
    random_model = build_model(cfg.model, 320, plan.core_attention, plan.linear_attention, 0)
    got = passkey_eval(cfg, plan, SimpleNamespace(module=random_model), None, contextlib.nullcontext(),
                       torch.device("cpu"), ByteTokenizer())
    assert got["eval_passkey_acc"] == 0.0 and got["eval_passkey_acc_by_length"] == {"300": 0.0, "600": 0.0}


def test_position_loss_equals_a_hand_computation(tmp_path):
    from distca.config import to_typed
    from distca.config.validate import build_plan
    from distca.data import build_dataset
    from distca.data.labels import next_token_labels
    from distca.evaluation.held_out import held_out_micro_batches
    from distca.evaluation.position_loss import position_loss
    from distca.model import build_model
    cfg = to_typed(tiny_cfg(tmp_path, "data=synthetic_pretrain", "data.synthetic_vocab=256", "eval.batches=2",
                            "eval.position_buckets=4"))
    plan = build_plan(cfg, 1, 320)
    plan.setup(torch.device("cpu"))
    model = build_model(cfg.model, 320, plan.core_attention, plan.linear_attention, 0)
    got = position_loss(model, None, held_out_micro_batches(cfg, plan, torch.device("cpu")),
                        contextlib.nullcontext(), torch.device("cpu"), cfg.data.seq_len, 4, True)
    sums, counts = torch.zeros(4, dtype=torch.float64), torch.zeros(4)
    _, held = build_dataset(cfg.data, cfg.train.seed, split="eval")
    with torch.no_grad():
        for _ in range(2 * cfg.train.global_batch_size):
            s = held.next_sample()
            shard = plan.build_shard(s.doc_lens)
            logits = (model(shard.local(s.tokens), shard) @ model.lm_head.weight.t()).double()
            labels = shard.local(next_token_labels(s.tokens, s.doc_lens))
            ok = labels != -100
            loss = torch.nn.functional.cross_entropy(logits[ok], labels[ok], reduction="none")
            bucket = shard.position_ids[ok] * 4 // cfg.data.seq_len
            sums.index_add_(0, bucket, loss)
            counts.index_add_(0, bucket, torch.ones_like(loss, dtype=torch.float))
    want = (sums / counts).tolist()
    assert got["eval_position_edges"] == [0, 16, 32, 48, 64]
    assert all(abs(a - b) < 1e-5 * b for a, b in zip(got["eval_position_loss"], want)), (got, want)


LAYOUTS = [["parallel.tp=2"], ["parallel.pp=2"], ["parallel.cp=2", "parallel.cp_algo=ring"],
           ["parallel.cp=2", "parallel.cp_algo=cad"]]
TASKS = ["train.steps=2", "eval.every=2", "eval.tasks=[loss,position_loss,passkey]", "eval.batches=2",
         "eval.passkey.lengths=[400]", "eval.passkey.depths=[0.5]", "eval.passkey.samples=2",
         "data.holdout=0.05", "data.seq_len=128"]
KEYS = ("eval_loss", "eval_position_loss", "eval_passkey_acc", "eval_passkey_token_acc")


def _layout_evals(rank, world, tmp, ref):
    from distca.train import train
    for layout in LAYOUTS:
        got = train(tiny_cfg(f"{tmp}/{'-'.join(layout).replace('=', '')}", *TASKS, *layout))[-1]
        assert got["eval_passkey_acc"] == ref["eval_passkey_acc"], layout
        assert got["eval_passkey_token_acc"] == ref["eval_passkey_token_acc"], layout
        for a, b in zip([got["eval_loss"], *got["eval_position_loss"]], [ref["eval_loss"], *ref["eval_position_loss"]]):
            assert abs(a - b) < 1e-4 * b, (layout, a, b)


@pytest.mark.slow
def test_tasks_give_the_single_process_values_at_every_layout(tmp_path):
    from distca.train import train
    ref = train(tiny_cfg(tmp_path / "one", *TASKS))[-1]
    assert all(k in ref for k in KEYS)
    run_distributed(_layout_evals, 2, str(tmp_path), {k: ref[k] for k in KEYS})


@pytest.mark.slow
def test_distca_eval_on_a_run_dir_and_on_a_hugging_face_folder(tmp_path):
    pytest.importorskip("transformers")
    from distca.train import train
    from tests.hf_models import make_hf_model
    train(tiny_cfg(tmp_path / "run", "train.steps=2", "checkpoint.save_final=true", "data.holdout=0.05"))
    make_hf_model(tmp_path / "hf", "llama")
    env = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(ROOT)}
    for target, extra in ((tmp_path / "run", ["eval.tasks=[loss,passkey]", "eval.passkey.lengths=[400]"]),
                          (tmp_path / "hf", ["eval.tasks=[passkey]", "eval.passkey.lengths=[400]",
                                             "eval.passkey.samples=1"])):
        r = subprocess.run([sys.executable, "-m", "distca.evaluation.cli", str(target), *extra,
                            "logger.progress=false"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout[r.stdout.index("{"):])
        assert out["eval_passkey_acc"] == 0.0 and "eval_passkey_grid" in out
        if target.name == "run":
            assert out["step"] == 2 and out["eval_loss"] > 0
    r = subprocess.run([sys.executable, "-m", "distca.evaluation.cli", str(tmp_path / "nothing")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "neither a run dir" in r.stderr


def test_passkey_needs_a_text_tokenizer(tmp_path):
    from distca.train import ConfigError, train
    with pytest.raises(ConfigError, match="eval.tasks has passkey, which writes a text prompt"):
        train(tiny_cfg(tmp_path, "data=synthetic_pretrain", "eval.every=1", "eval.tasks=[passkey]"))


def test_distca_eval_of_a_run_from_a_folder_needs_neither_the_folder_nor_its_tokenizer_path(tmp_path):
    """A run that took its architecture and tokenizer from model.init_from is evaluated from its
    own run dir: config.yaml's architecture, and the tokenizer copied into hf_source/."""
    from omegaconf import OmegaConf

    from distca.config import compose_config
    from distca.evaluation.cli import _config
    run = tmp_path / "run"
    (run / "hf_source").mkdir(parents=True)
    (run / "hf_source" / "tokenizer.json").write_text("{}")
    cfg = compose_config(["experiment=tiny", "model.vocab_size=320"])
    cfg.model.init_from = str(tmp_path / "gone")
    OmegaConf.save(cfg, run / "config.yaml")
    got = _config(str(run), ["eval.tasks=[passkey]"])
    assert got.model.init_from == "" and str(got.data.tokenizer) == "hf"
    assert got.data.tokenizer_path == str(run / "hf_source") and [str(t) for t in got.eval.tasks] == ["passkey"]
