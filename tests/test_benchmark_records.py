"""The GPU benchmarks write their tile configs into JSON records; that must not fail after the
measurements (a nested TileConfig once did, losing a run's results on the GPU machine)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")

from benchmarks.attention import config_record  # noqa: E402
from kernels.flash_attn.block_config import select_configs  # noqa: E402


@pytest.mark.parametrize("head_dim", [64, 128])
def test_default_configs_serialize(head_dim):
    record = json.loads(json.dumps(config_record(select_configs(head_dim, torch.bfloat16, interpret=False))))
    assert set(record) == {"forward", "dkdv", "dq", "fused"}


def test_variant_configs_serialize():
    from benchmarks.attention_variants import variants, variants_names
    configs = variants()
    assert tuple(configs) == variants_names()  # --profile's choices name every variant
    json.dumps({name: config_record(cfg) for name, cfg in configs.items()})
