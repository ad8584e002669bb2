"""What one GPU's share of a transformer layer costs in the CAD scale simulator.

Shapes are the two models DistCA evaluates (Llama-3-8B and CodeLlama-34B), sharded over
TP ranks: every GPU holds heads/TP of attention and 1/TP of the linear weights, so the CAD
group of one TP position sees per-GPU heads and per-GPU bytes. Attention time comes from the
measured kernel table (`parallel/cad/cost_table_<gpu>.json`, fwd and bwd separately) scaled
to the per-GPU head count; linear time from the GEMM throughput measured in the same run.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np

from parallel.cad.tasks import CostModel, load_cost_table

TABLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parallel", "cad")
TABLES = ("h200", "h100")  # "auto" takes the first one present


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads_q: int
    heads_kv: int
    head_dim: int
    ffn: int

    def linear_params_per_layer(self) -> int:
        """qkv + output projection + gated MLP (norms and embeddings are noise here)."""
        h, d = self.hidden, self.head_dim
        return h * (self.heads_q + 2 * self.heads_kv) * d + self.heads_q * d * h + 3 * h * self.ffn


SHAPES = {
    "8b": ModelShape("Llama-3-8B", 32, 4096, 32, 8, 128, 14336),
    "34b": ModelShape("CodeLlama-34B", 48, 8192, 64, 8, 128, 22016),
}


def pick_table(name: str) -> tuple[str, str, dict]:
    """(gpu name, path, table) for "h200" / "h100" / a JSON path / "auto" (H200 if present)."""
    if name == "auto":
        for gpu in TABLES:
            path = os.path.join(TABLE_DIR, f"cost_table_{gpu}.json")
            if os.path.exists(path):
                return gpu, os.path.normpath(path), load_cost_table(path)
        raise FileNotFoundError(f"no cost table in {TABLE_DIR}")
    path = os.path.join(TABLE_DIR, f"cost_table_{name}.json") if name in TABLES else name
    table = load_cost_table(path)
    if table is None:
        raise FileNotFoundError(f"cost table {path} not found")
    return (name if name in TABLES else table.get("device", "?")), os.path.normpath(path), table


@dataclass
class GpuCosts:
    """Per-GPU, per-layer prices. `cm` is forward + backward (what the planner balances);
    `cm_fwd` forward only (the backward is the difference)."""
    shape: ModelShape
    tp: int
    cm: CostModel
    cm_fwd: CostModel
    lin_fwd_tok: float   # seconds per token of the linear layers, forward
    lin_bwd_tok: float   # ... backward (2x the forward's FLOPs)
    gemm_tflops: float

    def attn(self, q_len, kv_len) -> tuple[np.ndarray, np.ndarray]:
        """(forward, backward) seconds of attention tasks."""
        total = self.cm.cost(q_len, kv_len)
        fwd = self.cm_fwd.cost(q_len, kv_len)
        return fwd, total - fwd


def gpu_costs(shape: ModelShape, tp: int, table: dict) -> GpuCosts:
    if shape.heads_q % tp:
        raise ValueError(f"tp={tp} does not divide the {shape.heads_q} query heads of {shape.name}")
    hq = shape.heads_q // tp
    hkv = max(1, shape.heads_kv // tp)  # kv heads are replicated when tp exceeds them
    fwd_only = copy.deepcopy(table)
    fwd_only["bwd_ms"] = np.zeros(np.asarray(table["fwd_ms"], dtype=np.float64).shape).tolist()
    cm = CostModel(hq, hkv, shape.head_dim, 2, table=table)
    cm_fwd = CostModel(hq, hkv, shape.head_dim, 2, table=fwd_only)
    tflops = float(table["gemm_bf16"]["tflops"])
    per_tok = 2.0 * shape.linear_params_per_layer() / tp / (tflops * 1e12)
    return GpuCosts(shape, tp, cm, cm_fwd, per_tok, 2.0 * per_tok, tflops)
