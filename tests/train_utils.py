"""Helpers for training tests: small configs and running `train` on gloo ranks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distca.config import compose_config

TINY = ["experiment=tiny", "data.seq_len=64", "data.max_documents=60", "train.global_batch_size=4",
        "logger.progress=false", "checkpoint.save_final=false", "train.warmup_steps=2"]


def tiny_cfg(run_dir, *overrides):
    return compose_config(TINY + [f"run_dir={run_dir}", *overrides])


def losses(history):
    return [m["loss"] for m in history]


def assert_parity(ref, got, step1_rtol=1e-5, rtol=1e-4, label=""):
    assert len(ref) == len(got), (label, len(ref), len(got))
    for i, (a, b) in enumerate(zip(ref, got)):
        tol = step1_rtol if i == 0 else rtol
        assert abs(a - b) <= tol * abs(a), f"{label} step {i + 1}: {a} vs {b} (rel {abs(a - b) / abs(a):.2e})"


WORDS = ("the plan cuts attention into tasks and every rank serves its share of queries keys "
         "values documents tokens layers ranks balance step loss gradient shard ring gather").split()


def mixed_corpus(path: Path) -> list[str]:
    """Overrides for a JSONL corpus of text documents of mixed lengths (seeded random words,
    so no edit elsewhere changes it): samples hold different document mixes and ranks really
    are imbalanced, where the tiny stdlib corpus cuts every 64-token sample from one long
    file, which CP layouts imbalance but DP ones do not."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for _ in range(400):
            n = int(rng.choice([rng.integers(3, 20), rng.integers(20, 60), rng.integers(60, 200)],
                               p=[0.5, 0.35, 0.15]))
            text = " ".join(rng.choice(WORDS, size=n // 4 + 1))[:n]
            f.write(json.dumps({"text": text}) + "\n")
    return ["data=jsonl", f"data.paths=[{path}]", "data.max_documents=-1", "data.seq_len=64"]


def rewind(ckpt_dir, step: int) -> None:
    """Pretend the run died after saving `step`: later checkpoints never happened."""
    import shutil
    for d in Path(ckpt_dir).glob("step_*"):
        if int(d.name.split("_")[1].split(".")[0]) > step:
            shutil.rmtree(d)
    (Path(ckpt_dir) / "latest").write_text(str(step))


def single_process_refs(tmp_path, runs, *overrides) -> dict:
    """For each distinct model override list in `runs` ((label, model, layout) triples), the
    one-process run's (losses, step-1 whole-model gradient norm): what parity suites compare."""
    from distca.train import train
    refs = {}
    for _, model, _ in runs:
        if tuple(model) not in refs:
            h = train(tiny_cfg(Path(tmp_path) / f"ref{len(refs)}", *overrides, *model))
            refs[tuple(model)] = (losses(h), h[0]["grad_norm"])
    return refs


def assert_grad_norm(ref_norm: float, history, label="") -> None:
    """The whole model's gradient norm at step 1 (before any update) equals one process's."""
    got = history[0]["grad_norm"]
    assert abs(got - ref_norm) <= 1e-5 * ref_norm, (label, got, ref_norm)
