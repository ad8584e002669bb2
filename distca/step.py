"""One optimizer step: this rank's micro-batches forward and backward (through the pipeline
stage or the engine), the update, the loss summed over the ranks that hold it, and the step's
throughput figures."""
from __future__ import annotations

import resource

import torch
import torch.distributed as dist

from distca.lifecycle import fault_injection
from distca.model.transformer import head_dim
from distca.observe.flops import attention_flops, dense_flops


def forward_backward(trainer, micro, n_labels: int, step: int) -> tuple[torch.Tensor, dict]:
    """Gradients of the step's loss (summed over tokens, divided by the global label count
    `n_labels`, so every layout computes the same mean); returns this rank's summed loss and
    the pipeline's metrics."""
    engine = trainer.engine
    scale = engine.group_size / n_labels  # the engine averages over its group: undo it
    if trainer.stage is not None:
        return trainer.stage.forward_backward(micro, scale, trainer.amp)
    local_sum = torch.zeros((), device=trainer.device)
    for i, mb in enumerate(micro):
        with engine.accumulate(last=i == len(micro) - 1):
            with trainer.amp:
                ce = engine(mb.input_ids, mb.shard, mb.labels)
            if fault_injection.nan_loss(step):
                ce = ce * float("nan")
            engine.backward(ce * scale)
        local_sum += ce.detach()
    return local_sum, {}


def global_loss(trainer, local_sum: torch.Tensor, n_labels: int) -> float:
    """The step's mean loss: summed over data and context parallel ranks, and from the last
    pipeline stage (which alone computes it) to every stage."""
    state = trainer.state
    if dist.is_initialized() and state.dpcp_group is not None:
        dist.all_reduce(local_sum, group=state.dpcp_group)
    if state.pp_group is not None:
        dist.all_reduce(local_sum, group=state.pp_group)
    return local_sum.item() / n_labels


def throughput(trainer, cfg, doc_lens: list[list[int]], dt: float, world: int) -> dict:
    """Tokens/s, model TFLOP/s per GPU (useful FLOPs over the real document lengths of every
    micro-batch of the step, `doc_lens`), MFU and peak memory of a step that took `dt` seconds."""
    tokens = sum(sum(lens) for lens in doc_lens)
    flops = dense_flops(trainer.num_params, tokens) + sum(
        attention_flops(lens, cfg.model, head_dim(cfg.model)) for lens in doc_lens)
    tflops = flops / dt / world / 1e12
    peak = trainer.peak_tflops
    return {"tokens": tokens, "tokens_per_s": tokens / dt, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None, "max_mem_gib": max_mem_gib(trainer.device)}


def max_mem_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
