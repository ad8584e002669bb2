"""Data parallelism (DDP and ZeRO 1/2/3) gives the loss of one process, same global batch."""
import json

import pytest

from distca.train import train
from tests.distributed_utils import run_distributed
from tests.train_utils import assert_parity, losses, tiny_cfg

STEPS = ["train.steps=10"]


def _dp_runs(rank, world, ref, tmp):
    import torch.distributed as dist
    for zero in (0, 1, 2, 3):
        cfg = tiny_cfg(f"{tmp}/z{zero}", *STEPS, f"parallel.zero_stage={zero}", f"parallel.dp={world}")
        got = losses(train(cfg))
        dist.barrier()
        assert_parity(ref, got, label=f"dp={world} zero_stage={zero}")


@pytest.mark.slow
def test_dp2_ddp_and_zero_match_single_process(tmp_path):
    ref = losses(train(tiny_cfg(tmp_path / "ref", *STEPS)))
    assert ref[-1] < ref[0]
    run_distributed(_dp_runs, 2, ref, str(tmp_path))


def test_metrics_file_and_config_written(tmp_path):
    hist = train(tiny_cfg(tmp_path, "train.steps=2"))
    rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("step", "loss", "tokens", "tokens_per_s", "tflops_per_gpu", "mfu", "max_mem_gib", "lr"):
        assert key in rows[0], key
    assert rows[0]["tokens"] == 4 * 64 and rows[0]["loss"] == hist[0]["loss"]
    assert (tmp_path / "config.yaml").read_text().count("seq_len: 64") == 1
