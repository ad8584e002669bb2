"""The one place the model is built and the parallel plan applied to it, in a fixed order:

1. build on the meta device: every layer's shapes, nothing allocated, the plan's
   core-attention and linear-attention strategies handed to the mixers;
2. pipeline cut: this rank keeps the layers of its chunks (`pipeline_stage.py`);
3. tensor parallelism: each kept layer sliced to this TP rank's part, sequence parallelism
   between blocks (`tensor_parallel.py`);
4. CAD nano-batches under sequence parallelism: each block gets the move of the row-sharded
   stream into each nano-batch's own rows (parallel/tensor/reshard.py; the model's
   NanoSequenceLayout, run once per run of nano-batch blocks);
5. materialise on the device (`materialize.py`): this rank's parameters only, from their
   initial values for `train.seed` (the same weights at every layout) or streamed from a
   Hugging Face folder (`model.init_from`); a CAD pool rank gets phantoms and reads nothing;
6. a CAD pool rank: weights dropped, the backward kept (`pool_rank.py`).

Each step only removes or re-slices what the step before left, so the order is the contract.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from distca.model import build_model
from distca.model.transformer import Block, HybridLM
from distca.parallelize.materialize import hf_source, materialize, phantom_source, random_source
from distca.parallelize.pipeline_stage import PipelineStage
from distca.parallelize.pool_rank import make_pool_rank
from distca.parallelize.tensor_parallel import apply_tensor_parallel
from parallel.tensor.reshard import NanoSequenceParallel


@dataclass
class ParallelModel:
    model: HybridLM               # this rank's part (placeholders for other stages' layers)
    stage: PipelineStage | None   # the pipeline stage that runs it, when pp > 1
    num_params: int               # the whole model's (before slicing): what FLOPs count


def build_parallel_model(cfg, plan, vocab: int, device: torch.device, micro_batches: int,
                         init=None) -> ParallelModel:
    """This rank's part of the model, on `device`, for the set-up plan (`plan.setup()` ran);
    `init`: the Hugging Face folder to read the weights from (distca/checkpoint/hf_source.py)."""
    model = build_model(cfg.model, vocab, plan.core_attention, plan.linear_attention, cfg.train.seed, meta=True)
    num_params = model.num_params()
    stage = PipelineStage(model, plan, micro_batches) if plan.dims.pp > 1 else None
    tp_group = plan.state.tp_group
    apply_tensor_parallel(model, tp_group)
    if tp_group is not None and plan.dims.tp > 1:
        for blk in model.blocks:
            if isinstance(blk, Block):
                blk.nano_sp = NanoSequenceParallel(tp_group)
    rank, tp = (dist.get_rank(tp_group), dist.get_world_size(tp_group)) if tp_group is not None else (0, 1)
    if plan.is_pool:
        fill = phantom_source(device)
    elif init is not None:
        fill = hf_source(init.weights, cfg.model, init.source_layers, init.tied_in_folder, cfg.train.seed, rank, tp)
    else:
        fill = random_source(cfg.model, cfg.train.seed, rank, tp)
    materialize(model, device, fill)
    model = model.to(device)  # buffers (linear attention's decays) were made on the CPU
    if plan.is_pool:
        make_pool_rank(model)
    return ParallelModel(model, stage, num_params)
