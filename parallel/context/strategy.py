"""What every attention strategy shares: the base class the plan and trainer rely on, and
the call-argument check whose errors say the fix."""
from __future__ import annotations

from parallel.context.shard import LAYOUTS


class Strategy:
    """Base of the attention strategies (softmax core attention and linear attention).

    `default_layout` is the shard layout the plan picks under `parallel.cp_layout=auto`;
    `layouts` are the layouts it runs on (the plan refuses others at config time);
    `step_metrics()` returns what the strategy measured since the last call (one optimizer
    step), merged into the trainer's step metrics; `plan_ahead(shard)` is told of a
    micro-batch before it runs."""
    default_layout = "contiguous"
    layouts: tuple[str, ...] = LAYOUTS

    def step_metrics(self) -> dict[str, float]:
        return {}

    def plan_ahead(self, shard) -> None:
        """A micro-batch this strategy will run soon: start planning it (CAD plans in a
        background thread); the others plan nothing."""


def check_call(q, k, v, shard, n: int, rank: int, who: str) -> None:
    if shard.cp_size != n or shard.cp_rank != rank:
        raise ValueError(f"{who}: the shard is for rank {shard.cp_rank} of {shard.cp_size} but this "
                         f"rank is {rank} of a CP group of {n}; build it with "
                         f"plan.build_shard(doc_lens) or build_shard(doc_lens, cp_rank, cp, layout)")
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"{who}: q/k/v must be [T_local, heads, head_dim], got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    t = shard.num_tokens
    if q.shape[0] != t or k.shape[0] != t or v.shape[0] != t:
        raise ValueError(f"{who}: q/k/v have {q.shape[0]}/{k.shape[0]}/{v.shape[0]} tokens but the "
                         f"shard owns {t}; pass this rank's tokens in the shard's local order")
    if k.shape != v.shape:
        raise ValueError(f"{who}: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{who}: query heads {q.shape[1]} must be a multiple of KV heads {k.shape[1]}")
