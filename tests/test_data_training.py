"""The trainer on a 60/40 mix of indexed datasets: data metrics in metrics.jsonl, and a run saved
at dp=2 resumed at dp=1 trains on exactly the data an uninterrupted dp=1 run sees."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from distca.train import train
from tests.data_helpers import texts, write_jsonl
from tests.distributed_utils import run_distributed
from tests.train_utils import assert_parity, losses, rewind, tiny_cfg


def mix_overrides(tmp_path: Path, packing: str = "sequential") -> list[str]:
    """Two indexed datasets tokenized by distca-tokenize with bytes, mixed 60/40."""
    from distca.data.tokenize_cli import tokenize
    for name, seed, longest in (("long", 1, 600), ("short", 2, 80)):
        if not (tmp_path / f"{name}.idx").exists():
            write_jsonl(tmp_path / f"{name}.jsonl", texts(150, seed=seed, longest=longest))
            tokenize([str(tmp_path / f"{name}.jsonl")], "byte", str(tmp_path / name), workers=1, progress=False)
    mix = f"[{{paths:[{tmp_path}/long],weight:0.6,name:long}},{{paths:[{tmp_path}/short],weight:0.4,name:short}}]"
    return ["data=tokens", f"data.mix={mix}", "data.token_vocab_size=258", "data.max_documents=-1",
            "data.seq_len=64", f"data.packing={packing}", "train.global_batch_size=10"]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_a_mix_trains_and_reports_its_data(tmp_path):
    hist = train(tiny_cfg(tmp_path / "run", *mix_overrides(tmp_path), "train.steps=3"))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["data_tokens_long"] == 6 * 64 and r["data_tokens_short"] == 4 * 64  # 60/40 of 10 samples
        assert 0 <= r["data_wait_s"] <= r["step_time_s"]
    assert losses(hist) == [r["loss"] for r in rows]


def _save_at_dp2(rank, world, tmp, overrides):
    # the same schedule as the full run (train.steps=6), a checkpoint after step 3
    train(tiny_cfg(f"{tmp}/dp2", *overrides, "train.steps=6", "parallel.dp=2", "checkpoint.every=3"))


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["sequential", "balanced"])
def test_resume_at_another_layout_trains_on_the_same_data(tmp_path, packing):
    overrides = mix_overrides(tmp_path, packing)
    full = train(tiny_cfg(tmp_path / "full", *overrides, "train.steps=6"))
    run_distributed(_save_at_dp2, 2, str(tmp_path), overrides)
    rewind(tmp_path / "dp2" / "checkpoints", 3)  # as if the dp=2 job had stopped after step 3
    resumed = train(tiny_cfg(tmp_path / "dp1", *overrides, "train.steps=6", f"checkpoint.load={tmp_path}/dp2"))
    assert [m["step"] for m in resumed] == [4, 5, 6]
    keys = ("tokens", "data_tokens_long", "data_tokens_short")
    assert [[m[k] for k in keys] for m in resumed] == [[m[k] for k in keys] for m in full[3:]]
    # the same data at steps 4-6: the losses agree to the layout tolerance (dp=2 and dp=1
    # weights differ in rounding only); other data would differ by far more
    assert_parity(losses(full[3:]), losses(resumed), step1_rtol=1e-4, rtol=1e-4, label=packing)


def test_console_line_and_wandb_panels_show_the_data_wait():
    from distca.observe.metrics import step_line, wandb_key
    m = {"step": 99999, "loss": 11.123456, "tokens_per_s": 123456789.0, "mfu": 0.512, "max_mem_gib": 139.9,
         "step_time_s": 2.0, "data_wait_s": 0.5}
    line = step_line(m, 100000, elapsed=3 * 86400 + 5, eta=9 * 86400)
    assert "data 25%" in line and len(line) <= 80, (len(line), line)
    quiet = step_line({**m, "data_wait_s": 0.09}, 100000, elapsed=65.0, eta=None)  # under 5%: not shown
    assert "data" not in quiet and "1:05" in quiet
    assert [wandb_key(k) for k in ("data_wait_s", "data_tokens_long", "data_dp_imbalance")] == \
        ["perf/data_wait_s", "data/tokens_long", "data/dp_imbalance"]
